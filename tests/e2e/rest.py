"""A tiny synchronous REST client for the e2e tests (urllib, raw multipart bodies).

It does not use ``client/sdk.py`` on purpose: the upload tests need to send bodies the SDK
would never build (missing parts, a spec as a file), and every error must come back as a
status and body rather than an exception.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from tests.e2e.waiting import Watched, wait_until

TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class Response:
    status: int
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


Part = tuple[str, str | None, bytes]  # (name, filename or None for a text field, content)


def multipart(parts: list[Part]) -> tuple[bytes, str]:
    boundary = "tn-e2e-" + os.urandom(8).hex()
    out = bytearray()
    for name, filename, content in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if filename:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


class Api:
    """A tiny synchronous REST client (urllib); errors come back as a status, not raised."""

    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url
        self.token = token

    def call(self, method: str, path: str, body: bytes | None = None,
             content_type: str | None = None) -> Response:
        headers = {"Content-Type": content_type} if content_type else {}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base_url + path, data=body, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return Response(resp.status, resp.read())
        except urllib.error.HTTPError as err:
            with err:
                return Response(err.code, err.read())

    def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        resp = self.call(method, path, **kw)
        assert resp.status == status, f"{method} {path}: {resp.status} {resp.raw[:500]!r}"
        return resp.json

    def post_task(self, parts: list[Part]) -> Response:
        body, ctype = multipart(parts)
        return self.call("POST", "/api/tasks", body, ctype)

    def submit(self, code: bytes | str, data: bytes | str | list[Any],
               spec: dict[str, Any] | None = None, *, code_name: str = "main.py",
               data_name: str = "data.json") -> dict[str, Any]:
        if isinstance(data, list):
            data = json.dumps(data)
        parts: list[Part] = [
            ("code", code_name, code.encode() if isinstance(code, str) else code),
            ("data", data_name, data.encode() if isinstance(data, str) else data),
        ]
        if spec is not None:
            parts.append(("spec", None, json.dumps(spec).encode()))
        resp = self.post_task(parts)
        assert resp.status == 201, f"submit: {resp.status} {resp.raw[:500]!r}"
        created: dict[str, Any] = resp.json
        return created

    def tasks(self) -> list[dict[str, Any]]:
        tasks: list[dict[str, Any]] = self.ok("GET", "/api/tasks")["tasks"]
        return tasks

    def task(self, task_id: str) -> dict[str, Any]:
        info: dict[str, Any] = self.ok("GET", f"/api/tasks/{task_id}")
        return info

    def chunks(self, task_id: str, offset: int = 0, limit: int | None = None) -> list[Any]:
        """Chunks from ``offset``: ``limit`` of them, or all pages when ``limit`` is None."""
        out: list[Any] = []
        next_offset: int | None = offset
        while next_offset is not None:
            page = self.ok("GET", f"/api/tasks/{task_id}/chunks?offset={next_offset}"
                                  f"&limit={limit or 1000}")
            out += page["chunks"]
            next_offset = None if limit else page["next_offset"]
        return out

    def results(self, task_id: str, partial: bool = False) -> list[Any]:
        query = "?partial=true" if partial else ""
        results: list[Any] = self.ok("GET", f"/api/tasks/{task_id}/results{query}")
        return results

    def cancel(self, task_id: str) -> Response:
        return self.call("POST", f"/api/tasks/{task_id}/cancel")

    def wait_state(self, task_id: str, timeout_s: float = 30.0,
                   states: tuple[str, ...] = TERMINAL, watch: tuple[Watched, ...] = ()
                   ) -> dict[str, Any]:
        return wait_until(lambda: self.task(task_id), timeout_s,
                          f"task {task_id} to be {'/'.join(states)}",
                          ready=lambda info: info["state"] in states, interval_s=0.1,
                          watch=watch)
