"""Steps the token and audit tests share: JSON calls, browser sign-ins, accounts made with
``tn-coordinator user add`` before a coordinator starts, ``tn`` as a subprocess, and the
coordinator's database read directly (read-only) to look for secrets."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.harness import BIN, Coordinator
from tests.e2e.rest import Api, Response


def send(api: Api, method: str, path: str, body: Any = None) -> Response:
    raw = None if body is None else json.dumps(body).encode()
    return api.call(method, path, raw, "application/json" if body is not None else None)


def create_token(api: Api, label: str, **extra: Any) -> dict[str, Any]:
    resp = send(api, "POST", "/api/tokens", {"label": label, **extra})
    assert resp.status == 201, resp.raw
    made: dict[str, Any] = resp.json
    return made


def my_tokens(api: Api, query: str = "") -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.ok("GET", "/api/tokens" + query)["tokens"]
    return items


@dataclass
class Browser:
    """A signed-in browser: its session cookie and CSRF token."""

    url: str
    cookie: str
    csrf: str

    def call(self, method: str, path: str, body: Any = None, *, csrf: bool = True
             ) -> Response:
        headers = {"Cookie": self.cookie, "Origin": self.url}
        if csrf:
            headers["X-CSRF-Token"] = self.csrf
        if body is not None:
            headers["Content-Type"] = "application/json"
        data = None if body is None else json.dumps(body).encode()
        return _open(urllib.request.Request(self.url + path, data=data, headers=headers,
                                            method=method))


def sign_in(url: str, **credentials: str) -> tuple[Response, Browser | None]:
    """``POST /auth/signin`` with a name and password or a token."""
    req = urllib.request.Request(url + "/auth/signin", data=json.dumps(credentials).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    resp, cookie = _open_with_cookie(req)
    if resp.status != 200 or cookie is None:
        return resp, None
    return resp, Browser(url, cookie, resp.json["csrf"])


def _open(req: urllib.request.Request) -> Response:
    return _open_with_cookie(req)[0]


def _open_with_cookie(req: urllib.request.Request) -> tuple[Response, str | None]:
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            cookie = resp.headers.get("Set-Cookie")
            return Response(resp.status, resp.read()), (cookie.split(";", 1)[0]
                                                         if cookie else None)
    except urllib.error.HTTPError as err:
        with err:
            return Response(err.code, err.read()), None


def user_add(coord: Coordinator, name: str, role: str, password: str) -> str:
    """``tn-coordinator user add NAME --token`` on a coordinator not yet started; its token."""
    done = subprocess.run(
        [str(BIN / "tn-coordinator"), "user", "add", name, "--role", role, "--password-stdin",
         "--token", "--data-dir", str(coord.data_dir)],
        input=password + "\n", capture_output=True, text=True, timeout=60, env=clean_env())
    assert done.returncode == 0, done.stderr
    [token] = [line.split(": ", 1)[1] for line in done.stdout.splitlines()
               if line.startswith("token: ")]
    return token


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TN_")}
    return {**env, **extra}


def tn(coord: Coordinator, token: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """``tn ARGV`` against ``coord`` with ``token`` (TN_URL and TN_TOKEN)."""
    return subprocess.run([str(BIN / "tn"), *argv], capture_output=True, text=True,
                          timeout=60, env=clean_env(TN_URL=coord.url, TN_TOKEN=token))


def database_text(coord: Coordinator, table: str | None = None) -> str:
    """Every value of ``table`` (or the raw bytes of the database and its WAL) as text."""
    db = coord.data_dir / "coordinator.sqlite3"
    if table is None:
        files = [db, Path(f"{db}-wal")]
        return "".join(p.read_bytes().decode("latin-1") for p in files if p.exists())
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(f"SELECT * FROM {table}").fetchall()
    finally:
        conn.close()
    return "\n".join(" | ".join(str(v) for v in row) for row in rows)
