"""Demo accounts for ``--demo``: a customer, a worker and an admin, tokens in demo.json.

A restart keeps the tokens in demo.json valid (they are checked, never revoked); a token that
no longer works (e.g. a new database) is replaced by a fresh one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from coordinator.accounts import Accounts, Role

DEMO: tuple[tuple[str, Role], ...] = (
    ("demo-customer", "customer"),
    ("demo-worker", "worker"),
    ("demo-admin", "admin"),
)


async def ensure_demo(accounts: Accounts, path: Path) -> dict[str, str]:
    try:
        saved: dict[str, str] = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    out: dict[str, str] = {}
    for name, role in DEMO:
        key = f"{role}_token"
        account = await accounts.by_name(name) or await accounts.create(name, role)
        token = saved.get(key, "")
        current = await accounts.authenticate(token) if token else None
        if current is None or current.id != account.id:
            token = await accounts.issue_token(account, "demo")
        out[key] = token
    if out != saved:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    return out
