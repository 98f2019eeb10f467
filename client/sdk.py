"""A small synchronous SDK over the coordinator's REST API, plus an async live-socket watcher.

HTTP goes through the standard library (``urllib.request``) so the SDK has no dependencies of
its own; ``watch_task`` uses ``websockets``. Every method returns the decoded JSON body as plain
dicts and lists (the shapes are the Structs in ``schema/rest.py``) and raises:

- ``ApiError`` when the coordinator answered with an error status (its ``error``/``field``);
- ``ConnectError`` when it could not be reached at all;
- ``TransferError`` (a ``ConnectError``) when the connection broke in the middle of a request.

Uploads are streamed from disk: ``MultipartBody`` computes its ``Content-Length`` up front and
yields the file blocks as they are sent, so a 500 MB dataset is never held in memory.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import secrets
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

BLOCK_BYTES = 256 << 10  # upload and download block size
ERROR_BODY_BYTES_MAX = 64 << 10  # how much of an error response we read
LIVE_MESSAGE_BYTES_MAX = 1 << 20  # largest live-socket frame we accept
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})

Progress = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)

_CONTENT_TYPES = {
    ".py": "text/x-python",
    ".zip": "application/zip",
    ".json": "application/json",
    ".jsonl": "application/jsonl",
    ".ndjson": "application/jsonl",
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
}


class ApiError(Exception):
    """The coordinator answered with an error status: ``{"error": ..., "field": ...}``."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.message} (field: {self.field})" if self.field else self.message


class ConnectError(Exception):
    """The coordinator could not be reached at ``url``."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the coordinator at {url}: {reason}")
        self.url = url
        self.reason = reason


class TransferError(ConnectError):
    """The connection to ``url`` broke (or timed out) after the request had started."""

    def __init__(self, url: str, reason: str) -> None:
        Exception.__init__(self, f"connection to {url} lost: {reason}")
        self.url = url
        self.reason = reason


class WatchError(Exception):
    """The live socket refused the subscription (e.g. unknown task) or closed it for good."""


# ---- multipart ---------------------------------------------------------------------------


def _quote_param(value: str) -> str:
    """Escape a Content-Disposition parameter the way browsers do (WHATWG form encoding)."""
    return value.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")


class MultipartBody:
    """A ``multipart/form-data`` body streamed from files, with its length known up front.

    ``fields`` are text parts; ``files`` map a part name to a path on disk. Iterating yields the
    body in blocks; ``progress(sent, total)`` is called after each block. A file whose size
    changes between construction and sending raises ``OSError`` rather than sending a body that
    disagrees with its ``Content-Length``.
    """

    def __init__(
        self,
        fields: dict[str, str],
        files: dict[str, Path],
        *,
        boundary: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.boundary = boundary or f"tn-{secrets.token_hex(16)}"
        self.progress = progress
        self.sent = 0
        self._pieces: list[bytes | tuple[Path, int]] = []
        sep = f"--{self.boundary}\r\n".encode()
        for name, value in fields.items():
            head = f'Content-Disposition: form-data; name="{_quote_param(name)}"\r\n\r\n'
            self._pieces += [sep, head.encode(), value.encode(), b"\r\n"]
        for name, path in files.items():
            ctype = _CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
            head = (
                f'Content-Disposition: form-data; name="{_quote_param(name)}"; '
                f'filename="{_quote_param(path.name)}"\r\nContent-Type: {ctype}\r\n\r\n'
            )
            self._pieces += [sep, head.encode(), (path, path.stat().st_size), b"\r\n"]
        self._pieces.append(f"--{self.boundary}--\r\n".encode())
        self.length = sum(p if isinstance(p, int) else len(p) for p in self._sizes())

    def _sizes(self) -> Iterator[bytes | int]:
        for piece in self._pieces:
            yield piece[1] if isinstance(piece, tuple) else piece

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def started(self) -> bool:
        return self.sent > 0

    @property
    def complete(self) -> bool:
        return self.sent == self.length

    def __iter__(self) -> Iterator[bytes]:
        self.sent = 0
        pending = b""  # small pieces are coalesced into the next block
        for piece in self._pieces:
            if isinstance(piece, bytes):
                pending += piece
                continue
            path, size = piece
            with path.open("rb") as f:
                left = size
                while True:
                    block = f.read(BLOCK_BYTES)
                    if not block:
                        break
                    if len(block) > left:
                        raise OSError(f"{path} grew while it was being uploaded")
                    left -= len(block)
                    yield self._count(pending + block)
                    pending = b""
                if left:
                    raise OSError(f"{path} shrank while it was being uploaded")
        if pending:
            yield self._count(pending)

    def _count(self, block: bytes) -> bytes:
        self.sent += len(block)
        if self.progress is not None:
            self.progress(self.sent, self.length)
        return block


# ---- REST client -------------------------------------------------------------------------


class _EarlyReplySend:
    """Stop sending a request body once the server has hung up, instead of failing at once.

    A coordinator refuses an oversized upload by answering (e.g. 413) and closing without
    reading the rest; then ``send`` hits a broken pipe. Swallowing that lets ``getresponse``
    read the reply that is already waiting, so the caller sees the coordinator's own error.
    If no reply arrived, ``getresponse`` fails and the request fails as before.
    """

    _hung_up = False

    def send(self, data: Any) -> None:
        if self._hung_up:
            return
        try:
            super().send(data)  # type: ignore[misc]
        except (BrokenPipeError, ConnectionResetError):
            self._hung_up = True


class _HTTPConnection(_EarlyReplySend, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_EarlyReplySend, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self) -> None:
        self.tls_context = ssl.create_default_context()
        super().__init__(context=self.tls_context)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPSConnection, req, context=self.tls_context)


def normalize_url(url: str) -> str:
    """Check an ``http(s)://host[:port][/prefix]`` base URL and drop its trailing slash."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url!r} (expected e.g. http://127.0.0.1:8000)")
    if parts.query or parts.fragment:
        raise ValueError(f"the coordinator URL must not have a query or fragment: {url!r}")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def live_url(url: str) -> str:
    """The live socket's URL for a coordinator base URL: http→ws, https→wss, + ``/ws/live``."""
    parts = urllib.parse.urlsplit(normalize_url(url))
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path + "/ws/live", "", ""))


def _reason(err: BaseException) -> str:
    inner = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(inner, TimeoutError):
        return "timed out"
    text = getattr(inner, "strerror", None) or str(inner)
    return text or type(inner).__name__


def _decode_error(status: int, reason: str, body: bytes) -> ApiError:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        field = doc.get("field")
        return ApiError(status, doc["error"], field if isinstance(field, str) else None)
    text = body.decode("utf-8", "replace").strip()
    message = f"HTTP {status} {reason}".strip()
    return ApiError(status, f"{message}: {text[:200]}" if text else message)


class Client:
    """Synchronous access to one coordinator. ``url`` is its base URL (``http://host:port``)."""

    def __init__(
        self, url: str, token: str, timeout_s: float = 30, *, upload_timeout_s: float = 600
    ) -> None:
        self.url = normalize_url(url)
        self.token = token
        self.timeout_s = timeout_s
        # Answering an upload includes parsing the dataset, which can take a while.
        self.upload_timeout_s = max(timeout_s, upload_timeout_s)
        self._opener = urllib.request.build_opener(_HTTPHandler, _HTTPSHandler())

    # -- plumbing --

    def _headers(self, auth: bool = True) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "tn-sdk/0.1"}
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _open(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str | int] | None = None,
        body: MultipartBody | None = None,
        json_body: Any = None,
        auth: bool = True,
        timeout_s: float | None = None,
    ) -> http.client.HTTPResponse:
        target = self.url + path
        if query:
            target += "?" + urllib.parse.urlencode(query)
        headers = self._headers(auth)
        data: MultipartBody | bytes | None = body
        if body is not None:
            headers["Content-Type"] = body.content_type
            headers["Content-Length"] = str(body.length)
        elif json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(target, data=data, headers=headers, method=method)
        try:
            resp: http.client.HTTPResponse = self._opener.open(
                request, timeout=timeout_s or self.timeout_s
            )
        except urllib.error.HTTPError as e:
            with e:
                try:
                    detail = e.read(ERROR_BODY_BYTES_MAX)
                except (OSError, http.client.HTTPException):
                    detail = b""
                raise _decode_error(e.code, e.reason, detail) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            if body is not None and body.started:
                why = f"{_reason(e)} during a {body.length}-byte upload (the coordinator may "
                why += "have refused it, e.g. as too large)"
                raise TransferError(self.url, why) from None
            raise ConnectError(self.url, _reason(e)) from None
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._open(method, path, **kwargs) as resp:
            try:
                raw = resp.read()
            except (OSError, http.client.HTTPException) as e:
                raise TransferError(self.url, _reason(e)) from None
            status = resp.status
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(status, f"{method} {path}: the response is not JSON") from None

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        doc = self._json(method, path, **kwargs)
        if not isinstance(doc, dict):
            raise ApiError(200, f"{method} {path}: expected a JSON object")
        return doc

    @staticmethod
    def _task_path(task_id: str, suffix: str = "") -> str:
        return f"/api/tasks/{urllib.parse.quote(task_id, safe='')}{suffix}"

    # -- API --

    def health(self) -> dict[str, Any]:
        return self._object("GET", "/healthz", auth=False)

    def submit_task(
        self,
        code: Path,
        data: Path,
        spec: dict[str, Any],
        *,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Upload ``code`` (.py or .zip) and ``data`` (.json/.jsonl/.csv) with ``spec``."""
        body = MultipartBody(
            {"spec": json.dumps(spec)}, {"code": Path(code), "data": Path(data)}, progress=progress
        )
        return self._object("POST", "/api/tasks", body=body, timeout_s=self.upload_timeout_s)

    def list_tasks(self) -> list[dict[str, Any]]:
        tasks = self._object("GET", "/api/tasks").get("tasks")
        if not isinstance(tasks, list):
            raise ApiError(200, "GET /api/tasks: the response has no task list")
        return tasks

    def task(self, task_id: str) -> dict[str, Any]:
        return self._object("GET", self._task_path(task_id))

    def chunks(self, task_id: str, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        query: dict[str, str | int] = {"offset": offset, "limit": limit}
        return self._object("GET", self._task_path(task_id, "/chunks"), query=query)

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self._object("POST", self._task_path(task_id, "/cancel"))

    # -- money (integer credits in the smallest unit: 1234 is 12.34) --

    def wallet(self) -> dict[str, Any]:
        return self._object("GET", "/api/wallet")

    def deposit(self, amount: int, *, idempotency_key: str | None = None,
                method: str | None = None) -> dict[str, Any]:
        """Direct (sandbox: the new balance) or through Stripe (a ``checkout_url``)."""
        body: dict[str, Any] = {"amount": amount}
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        if method:
            body["method"] = method
        return self._object("POST", "/api/wallet/deposit", json_body=body)

    def withdraw(self, amount: int, *, idempotency_key: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"amount": amount}
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        return self._object("POST", "/api/wallet/withdraw", json_body=body)

    def transactions(self, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        query: dict[str, str | int] = {"offset": offset, "limit": limit}
        return self._object("GET", "/api/wallet/transactions", query=query)

    def earnings(self) -> dict[str, Any]:
        return self._object("GET", "/api/wallet/earnings")

    def fund_task(self, task_id: str, amount: int) -> dict[str, Any]:
        return self._object("POST", self._task_path(task_id, "/fund"),
                            json_body={"amount": amount})

    def withdrawals(self) -> list[dict[str, Any]]:
        """Pending withdrawals (admin)."""
        items = self._object("GET", "/api/admin/withdrawals").get("withdrawals")
        if not isinstance(items, list):
            raise ApiError(200, "GET /api/admin/withdrawals: the response has no list")
        return items

    def decide_withdrawal(self, withdrawal_id: int, approve: bool) -> dict[str, Any]:
        verb = "approve" if approve else "reject"
        return self._object("POST", f"/api/admin/withdrawals/{int(withdrawal_id)}/{verb}")

    # -- API tokens and the audit log --

    def create_token(self, label: str, *, expires_in_s: int | None = None,
                     account: str | None = None) -> dict[str, Any]:
        """A new token (its ``token`` is in this response only); ``account``: admins."""
        body: dict[str, Any] = {"label": label}
        if expires_in_s is not None:
            body["expires_in_s"] = expires_in_s
        if account:
            body["account"] = account
        return self._object("POST", "/api/tokens", json_body=body)

    def tokens(self, account: str | None = None) -> list[dict[str, Any]]:
        """Your tokens (or, for an admin, ``account``'s): ids and labels, never secrets."""
        query: dict[str, str | int] = {"account": account} if account else {}
        items = self._object("GET", "/api/tokens", query=query).get("tokens")
        if not isinstance(items, list):
            raise ApiError(200, "GET /api/tokens: the response has no token list")
        return items

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self._object("DELETE", f"/api/tokens/{urllib.parse.quote(token_id, safe='')}")

    def audit(self, *, action: str | None = None, actor: str | None = None,
              since_ms: int | None = None, before_id: int | None = None,
              limit: int | None = None) -> dict[str, Any]:
        """A page of the audit log, newest first (admin); ``next_before_id`` pages on."""
        given = {"action": action, "actor": actor, "since_ms": since_ms,
                 "before_id": before_id, "limit": limit}
        query: dict[str, str | int] = {k: v for k, v in given.items() if v is not None}
        return self._object("GET", "/api/admin/audit", query=query)

    def results_to(
        self,
        task_id: str,
        fileobj: IO[bytes],
        fmt: str = "json",
        *,
        progress: Progress | None = None,
    ) -> int:
        """Stream a finished task's results into ``fileobj`` block by block; return the bytes.

        ``fmt`` is ``"json"`` (one array) or ``"jsonl"`` (one output per line).
        """
        if fmt not in ("json", "jsonl"):
            raise ValueError(f"unknown results format {fmt!r} (use json or jsonl)")
        path = self._task_path(task_id, "/results")
        written = 0
        query: dict[str, str | int] = {"format": fmt} if fmt != "json" else {}  # json: default
        with self._open("GET", path, query=query) as resp:
            length = resp.getheader("Content-Length")
            total = int(length) if length and length.isdigit() else None
            while True:
                try:
                    block = resp.read(BLOCK_BYTES)
                except (OSError, http.client.HTTPException) as e:
                    raise TransferError(self.url, f"{_reason(e)} after {written} bytes") from None
                if not block:
                    break
                fileobj.write(block)
                written += len(block)
                if progress is not None:
                    progress(written, total)
        if total is not None and written != total:
            raise TransferError(self.url, f"the results ended after {written} of {total} bytes")
        return written


# ---- live socket -------------------------------------------------------------------------


async def watch_task(
    url: str,
    token: str,
    task_id: str,
    on_update: Callable[[dict[str, Any]], bool],
    *,
    backoff_initial_s: float = 0.25,
    backoff_max_s: float = 5.0,
    give_up_after_s: float = 60.0,
    open_timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Follow one task on the live socket until ``on_update(task_info)`` returns True.

    Each ``{"type": "task"}`` frame for the task is passed to ``on_update``; the TaskInfo for
    which it returns True is returned. If the socket closes or cannot connect, this reconnects
    with jittered exponential backoff and subscribes again (the server replies with a fresh
    snapshot); after ``give_up_after_s`` without a successful snapshot it raises
    ``ConnectError``. An HTTP 400/401/403/404 on the handshake raises ``ApiError``; an ``error``
    frame about the task, or a policy-violation close, raises ``WatchError``.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

    ws_url = live_url(url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    topic = f"task:{task_id}"
    subscribe = json.dumps({"type": "subscribe", "topics": [topic]})
    loop = asyncio.get_running_loop()
    delay = backoff_initial_s
    failing_since = loop.time()
    while True:
        reason = ""
        try:
            async with connect(
                ws_url,
                additional_headers=headers,
                open_timeout=open_timeout_s,
                max_size=LIVE_MESSAGE_BYTES_MAX,
            ) as ws:
                await ws.send(subscribe)
                async for raw in ws:
                    kind, payload = _live_message(raw, task_id, topic)
                    if kind == "error":
                        reason = f"the live socket reported: {payload}"
                        continue
                    if kind != "task" or not isinstance(payload, dict):
                        continue
                    delay, failing_since = backoff_initial_s, loop.time()
                    if on_update(payload):
                        return payload
                reason = reason or "the coordinator closed the live socket"
        except InvalidStatus as e:
            status = e.response.status_code
            if status in (400, 401, 403, 404):
                body = bytes(e.response.body)
                raise _decode_error(status, e.response.reason_phrase, body) from None
            reason = f"HTTP {status} on the live socket"
        except ConnectionClosed as e:
            if e.rcvd is not None and e.rcvd.code == 1008:
                why = reason or e.rcvd.reason or "policy violation"
                raise WatchError(f"the coordinator closed the live socket: {why}") from None
            reason = reason or "the live socket closed"
        except (OSError, TimeoutError, WebSocketException) as e:
            reason = _reason(e)
        if loop.time() - failing_since > give_up_after_s:
            raise ConnectError(ws_url, reason)
        await asyncio.sleep(delay * (0.5 + random.random() / 2))
        delay = min(delay * 2, backoff_max_s)


def _live_message(raw: str | bytes, task_id: str, topic: str) -> tuple[str, Any]:
    """Classify a live frame: ("task", TaskInfo) for our task, ("error", reason), or ("", None).

    An error frame naming our topic (unknown task, not allowed) raises ``WatchError``; one
    naming no topic is returned so it can explain a close that follows it.
    """
    try:
        msg = json.loads(raw)
    except ValueError:
        return "", None
    if not isinstance(msg, dict):
        return "", None
    if msg.get("type") == "error":
        reason = str(msg.get("reason") or "unspecified error")
        if msg.get("topic") == topic:
            raise WatchError(reason)
        return ("error", reason) if msg.get("topic") is None else ("", None)
    task = msg.get("task")
    if msg.get("type") == "task" and isinstance(task, dict) and task.get("id") == task_id:
        return "task", task
    return "", None
