"""Tenants for the security tests: one real coordinator with two customers, two worker
accounts and an admin, and customer A's secrets to look for in every answer anyone else gets.

Customer A ("alice") owns task T1: six items in three chunks, two of them done (their outputs
are stored results), the third pending forever: T1 requires the capability ``pool=alice``,
which only the setup's own worker session declares, so no later session of a test is ever
given its chunks. Customer B ("bob") owns a task of his own. The worker accounts are
``worker`` (W) and ``worker2`` (another worker account, for lease theft across accounts);
the admin is the coordinator's demo admin.

The accounts are made through ``coordinator.accounts`` before the coordinator starts (there is
no REST route for accounts, and the store must not be shared with a running coordinator).
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.routing import Route, WebSocketRoute

from coordinator.accounts import Accounts, Role
from coordinator.app import create_app
from coordinator.config import Config
from coordinator.store.sqlite import SqliteStore
from schema import worker as w
from tests.e2e.harness import Cluster, Coordinator
from tests.e2e.rest import Api, Response
from tests.e2e.waiting import wait_until
from tests.e2e.wire import items_of, output, session

# long silence limits (raw sessions here never heartbeat), a short disconnect grace (stale
# leases expire quickly), a distinctive starting balance
INITIAL = 7_340_017
ENV = {
    "TN_HEARTBEAT_MS": "5000", "TN_LEASE_MS": "60000", "TN_DISCONNECT_GRACE_MS": "300",
    "TN_TICK_MS": "100", "DEV_INITIAL_WALLET": str(INITIAL), "WALLET_SANDBOX_ENABLED": "true",
    "PLATFORM_FEE_PERCENT": "10",
}

ALICE_TASK_NAME = "alice-secret-task-4f1c9e"
CODE_MARKER = "ALICE_CODE_MARKER_7d2b"
DATA_MARKER = "alice-data-9a6e"
OUTPUT_MARKER = "alice-output-3c58"
ALICE_CODE = (f'MARKER = "{CODE_MARKER}"\n\n\ndef process(item):\n'
              f'    return item.replace("{DATA_MARKER}", "{OUTPUT_MARKER}")\n')
ALICE_ITEMS = [f"{DATA_MARKER}-{i}" for i in range(6)]
T1_PRICE, T1_BUDGET = 100, 1000
PLAIN_CODE = "def process(item):\n    return item\n"

CALLERS = ("anon", "bad", "alice", "bob", "worker", "admin")
ROLES: dict[str, Role] = {"alice": "customer", "bob": "customer", "worker": "worker",
                          "worker2": "worker", "admin": "admin"}
BAD_TOKEN = "tn_" + "A" * 43  # the shape of a token, known to nobody
SPARE_LABELS = ("spare-alice", "spare-admin", "spare-refused")  # more tokens of A


@dataclass
class Tenants:
    coord: Coordinator
    tokens: dict[str, str]  # caller -> token ("alice", "bob", "worker", "worker2", "admin")
    ids: dict[str, str]  # caller -> account id
    task_id: str  # A's task T1
    bob_task_id: str
    spare_tokens: dict[str, str] = field(default_factory=dict)  # label -> another A token

    def api(self, caller: str) -> Api:
        if caller == "anon":
            return Api(self.coord.url, None)
        if caller == "bad":
            return Api(self.coord.url, BAD_TOKEN)
        return Api(self.coord.url, self.tokens[caller])

    def alice_balance(self) -> int:
        balance: int = self.api("alice").ok("GET", "/api/wallet")["balance"]
        return balance

    def secrets(self) -> list[str]:
        """What no one but A and the admin may ever see."""
        return [ALICE_TASK_NAME, CODE_MARKER, DATA_MARKER, OUTPUT_MARKER, self.ids["alice"],
                "sec-alice", str(self.alice_balance()), *self.spare_tokens,
                *self.spare_tokens.values(), self.tokens["alice"]]

    def scratch_task(self, pool: str = "nobody", budget: int = 10) -> str:
        """A fresh task of A that no worker takes (it requires ``pool=<pool>``)."""
        created = self.api("alice").submit(PLAIN_CODE, [1, 2], {
            "chunk_size": 1, "requirements": [f"pool={pool}"], "budget": budget,
            "price_per_chunk": 1, "name": "scratch"})
        task_id: str = created["id"]
        return task_id


_PARAM = re.compile(r"\{[^}]*\}")


def norm(path: str) -> str:
    """``/api/tasks/{task_id}/chunks/{index:int}`` -> ``/api/tasks/{}/chunks/{}``."""
    return _PARAM.sub("{}", path)


def app_routes() -> dict[tuple[str, str], str]:
    """(method, normalised path) -> path template of every route of the app ("WS" for the
    sockets); HEAD is left out (Starlette adds it to every GET)."""
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Config(data_dir=Path(tmp)))  # routes only: the lifespan never runs
    out: dict[tuple[str, str], str] = {}
    for r in app.routes:
        if isinstance(r, WebSocketRoute):
            out[("WS", r.path)] = r.path
        elif isinstance(r, Route):
            for method in sorted((r.methods or set()) - {"HEAD"}):
                out[(method, norm(r.path))] = r.path
    return out


def leaks(raw: bytes | str, secrets: list[str]) -> list[str]:
    """The secrets found in a response body or frame (as written, or JSON-escaped)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    found = []
    for s in secrets:
        if s.isdigit():  # a number: only as a whole number, not inside a longer one
            hit = re.search(rf"(?<!\d){s}(?!\d)", text) is not None
        else:
            hit = s in text or json.dumps(s)[1:-1] in text
        if hit:
            found.append(s)
    return found


_EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Group|Exit|Interrupt)\b")


def unexplained_tracebacks(log: str, known: list[tuple[tuple[str, ...], str]]) -> list[str]:
    """The tracebacks in a coordinator log that no ``known`` (frame markers, exception name)
    pair explains: one is explained when its innermost exception is that exception and one
    of its frames contains a marker (e.g. "in decode_body"). Exception groups' box drawing
    is taken off first."""
    out = []
    for block in log.split("Traceback (most recent call last):")[1:]:
        frames: list[str] = []
        error = ""
        for raw in block.split("\n")[1:]:
            line = raw.lstrip(" |+-")
            if line.startswith("File "):
                frames.append(line)
            elif _EXCEPTION_LINE.match(line) and frames:
                error = line
                break
        if error.startswith(("ExceptionGroup", "BaseExceptionGroup")):
            continue  # its sub-exceptions follow as tracebacks of their own
        explained = any(error.startswith(exc) and any(m in f for f in frames for m in markers)
                        for markers, exc in known)
        if not explained:
            out.append("\n".join([*frames, error]))
    return out


def error_body_problem(resp: Response) -> str | None:
    """Why a 4xx/5xx body is not the JSON error body every refusal must be, or None."""
    try:
        doc = json.loads(resp.raw)
    except ValueError:
        return f"not JSON: {resp.raw[:200]!r}"
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str) or not doc["error"]:
        return f"no 'error' message: {resp.raw[:200]!r}"
    return None


async def _create_accounts(db: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    store = await SqliteStore.open(db)
    try:
        accounts = Accounts(store)
        tokens: dict[str, str] = {}
        ids: dict[str, str] = {}
        spares: dict[str, str] = {}
        for caller in ("alice", "bob", "worker", "worker2"):
            account = await accounts.create(f"sec-{caller}", ROLES[caller])
            ids[caller] = account.id
            tokens[caller] = await accounts.issue_token(account, "main")
            if caller == "alice":
                for label in SPARE_LABELS:
                    spares[label] = await accounts.issue_token(account, label)
        return tokens, ids, spares
    finally:
        await store.close()


async def _complete_two_chunks(coord: Coordinator, token: str, task_id: str) -> None:
    """A raw worker session that returns the results of two of T1's chunks, then leaves
    (the third chunk's lease goes back to the queue after the disconnect grace)."""
    accepted = sent = 0
    async with session(coord, "alice-pool-worker", token=token,
                       capabilities=["pool=alice"], slots=1) as peer:
        while accepted < 2:
            msg = await peer.recv()
            if isinstance(msg, w.Assign):
                assert msg.task_id == task_id, msg
                if sent < 2:
                    sent += 1
                    outputs = [str(i).replace(DATA_MARKER, OUTPUT_MARKER) for i in items_of(msg)]
                    await peer.send(w.Result(msg.lease_id, output(outputs)))
            elif isinstance(msg, w.Accepted):
                accepted += 1
            else:
                raise AssertionError(f"unexpected {msg!r}")


def setup_tenants(cluster: Cluster, env: dict[str, str] | None = None) -> Tenants:
    coord = cluster.coordinator({**ENV, **(env or {})}, start=False)
    tokens, ids, spares = asyncio.run(_create_accounts(coord.data_dir / "coordinator.sqlite3"))
    coord.start()
    tokens["admin"] = coord.admin_token
    admin = Api(coord.url, coord.admin_token)
    ids["admin"] = admin.ok("GET", "/api/wallet")["account_id"]
    alice = Api(coord.url, tokens["alice"])
    created = alice.submit(ALICE_CODE, ALICE_ITEMS, {
        "name": ALICE_TASK_NAME, "chunk_size": 2, "requirements": ["pool=alice"],
        "price_per_chunk": T1_PRICE, "budget": T1_BUDGET})
    task_id: str = created["id"]
    asyncio.run(_complete_two_chunks(coord, tokens["worker"], task_id))
    wait_until(lambda: [c["state"] for c in alice.chunks(task_id)], 20,
               "T1's third chunk to go back to the queue",
               ready=lambda s: s == ["done", "done", "pending"], watch=(coord,))
    bob = Api(coord.url, tokens["bob"])
    bob_task: dict[str, Any] = bob.submit(PLAIN_CODE, [1, 2], {
        "chunk_size": 1, "requirements": ["pool=bob"], "name": "bob-task"})
    t = Tenants(coord, tokens, ids, task_id, bob_task["id"], spares)
    others = {Api(coord.url, tokens[c]).ok("GET", "/api/wallet")["balance"]
              for c in ("bob", "worker", "worker2", "admin")}
    assert t.alice_balance() not in others, "A's balance must be distinctive to find leaks"
    return t
