"""REST routes: tasks, their chunks and results, and the code workers download."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import msgspec
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from coordinator.accounts import Account, Accounts
from coordinator.artifacts import TaskArtifacts
from coordinator.config import Config
from coordinator.core.capabilities import RequirementError, validate_requirements
from coordinator.core.core import Core
from coordinator.core.events import (
    TaskCancel,
    TaskFund,
    TaskPause,
    TaskResume,
    TaskSubmitted,
    TaskUpdate,
)
from coordinator.core.lifecycle import TaskState
from coordinator.core.state import Task
from coordinator.http_auth import ApiError, authenticate, json_response, query_int
from coordinator.http_wallet import BODY_BYTES_MAX, check_amount, decode_body, read_body
from coordinator.parsing import DECODE_ERRORS, whole_number
from coordinator.runtime import Runtime
from coordinator.store.sqlite import SqliteStore
from coordinator.uploads import UploadError, parse_code, parse_dataset
from coordinator.views import chunk_infos, task_info
from schema.rest import (
    ChunkAttempt,
    ChunkDetail,
    ChunkPage,
    FundRequest,
    Health,
    TaskCreated,
    TaskList,
    TaskPatch,
    TaskSpec,
)

VERSION = "0.1.0"
RESULT_PAGE_ROWS = 256
PREVIEW_ITEMS = 3  # outputs shown in a chunk's result preview
PREVIEW_CHARS = 300

# (path, method, TaskApi method name)
ROUTES = [
    ("/healthz", "GET", "health"),
    ("/api/tasks", "POST", "create"),
    ("/api/tasks", "GET", "list"),
    ("/api/tasks/{task_id}", "GET", "get"),
    ("/api/tasks/{task_id}/chunks", "GET", "chunks"),
    ("/api/tasks/{task_id}/chunks/{index}", "GET", "chunk"),  # (checked here: see chunk)
    ("/api/tasks/{task_id}/results", "GET", "results"),
    ("/api/tasks/{task_id}/cancel", "POST", "cancel"),
    ("/api/tasks/{task_id}/fund", "POST", "fund"),
    ("/api/tasks/{task_id}/pause", "POST", "pause"),
    ("/api/tasks/{task_id}/resume", "POST", "resume"),
    ("/api/tasks/{task_id}", "PATCH", "patch"),
    ("/api/tasks/{task_id}/code", "GET", "code"),
]


class TaskApi:
    def __init__(
        self, config: Config, core: Core, runtime: Runtime, store: SqliteStore,
        accounts: Accounts, artifacts: Callable[[str], TaskArtifacts],
    ) -> None:
        self.config = config
        self.core = core
        self.runtime = runtime
        self.store = store
        self.accounts = accounts
        self.artifacts = artifacts

    async def health(self, request: Request) -> Response:
        return json_response(Health(ok=True, version=VERSION))

    # ---- helpers ----------------------------------------------------------------------

    def _own_task(self, account: Account, task_id: str) -> Task:
        task = self.core.tasks.get(task_id)
        if task is None or (account.role != "admin" and task.owner != account.id):
            raise ApiError(404, f"no task {task_id!r} among yours; list them with `tn task list`")
        return task

    # ---- routes -----------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        account = await authenticate(request, self.accounts, "customer")
        raw_length = request.headers.get("content-length")
        length = whole_number(raw_length)
        if raw_length is None:
            raise ApiError(411, "send the upload with a Content-Length header")
        if length is None:
            raise ApiError(413 if raw_length.isascii() and raw_length.isdigit() else 400,
                           f"Content-Length {raw_length[:40]!r} is not a size this server "
                           f"takes; the limit is {self.config.request_bytes_max} bytes "
                           "(TN_REQUEST_BYTES_MAX)")
        if length > self.config.request_bytes_max:
            raise ApiError(413, f"the upload is {length} bytes; the limit is "
                                f"{self.config.request_bytes_max} (TN_REQUEST_BYTES_MAX)")
        limits = self.config.uploads
        async with request.form(max_files=3, max_fields=4, max_part_size=1 << 20) as form:
            code, data, spec_raw = form.get("code"), form.get("data"), form.get("spec")
            if not isinstance(code, UploadFile):
                raise ApiError(400, "attach the code as a file part named 'code'", "code")
            if not isinstance(data, UploadFile):
                raise ApiError(400, "attach the dataset as a file part named 'data'", "data")
            code_name, code_bytes = code.filename or "", await code.read()
            data_name, data_bytes = data.filename or "", await data.read()
        spec = _parse_spec(spec_raw)
        for name in ("budget", "price_per_chunk", "max_spend_per_minute"):
            if getattr(spec, name) > self.config.money_amount_max:
                raise ApiError(400, f"{name} is over the {self.config.money_amount_max}-credit "
                                    "limit (TN_MONEY_AMOUNT_MAX)", "spec")
        task_id = "t_" + secrets.token_hex(8)
        arts = self.artifacts(task_id)

        def prepare() -> tuple[str, int, int]:
            bundle = parse_code(code_name, code_bytes, limits)
            items = parse_dataset(data_name, data_bytes, limits)
            return bundle.digest, arts.write(bundle, items, spec.chunk_size), len(items)

        try:
            code_ref, chunks, items_total = await anyio.to_thread.run_sync(prepare)
        except UploadError as exc:
            arts.remove()
            raise ApiError(400, exc.message, exc.field) from None
        reply = await self.runtime.call(TaskSubmitted(
            0, 0, task_id, account.id, spec.name, chunks, items_total, spec.chunk_size,
            spec.max_concurrency, spec.max_attempts, spec.chunk_timeout_ms,
            list(spec.requirements), code_ref, spec.price_per_chunk, spec.budget,
            spec.max_spend_per_minute, spec.priority, spec.verification,
            spec.quorum_k if spec.verification == "quorum" else 1,
            spec.quorum_m if spec.verification == "quorum" else 1,
            spec.spot_per_mille if spec.verification == "spot" else 0, secrets.token_hex(16),
        ))
        if not reply.ok:
            arts.remove()
            raise ApiError(reply.status, reply.error)
        await self.accounts.audit.record(  # the budget went into escrow
            "task.create", account, request, target=task_id,
            detail={"budget": spec.budget, "price_per_chunk": spec.price_per_chunk})
        return json_response(TaskCreated(task_id, chunks, items_total), 201)

    async def list(self, request: Request) -> Response:
        account = await authenticate(request, self.accounts, "customer")
        tasks = [
            task_info(self.core, t) for t in self.core.tasks.values()
            if account.role == "admin" or t.owner == account.id
        ]
        await self.runtime.flushed()  # answer once what it shows is durable
        return json_response(TaskList(tasks))

    async def get(self, request: Request) -> Response:
        account = await authenticate(request, self.accounts, "customer")
        info = task_info(self.core, self._own_task(account, request.path_params["task_id"]))
        await self.runtime.flushed()  # answer once what it shows is durable
        return json_response(info)

    async def chunks(self, request: Request) -> Response:
        account = await authenticate(request, self.accounts, "customer")
        task = self._own_task(account, request.path_params["task_id"])
        offset = query_int(request, "offset", 0, 0, task.chunks_total)
        limit = query_int(request, "limit", 100, 1, 1000)
        page = chunk_infos(self.core, task, offset, limit)
        await self.runtime.flushed()  # answer once what it shows is durable
        workers = await self.store.chunk_workers(task.id, offset, offset + limit)
        page = [
            msgspec.structs.replace(c, worker=workers.get(c.index))
            if c.state == "done" else c for c in page
        ]
        nxt = offset + limit if offset + limit < task.chunks_total else None
        return json_response(ChunkPage(page, nxt))

    async def chunk(self, request: Request) -> Response:
        account = await authenticate(request, self.accounts, "customer")
        task = self._own_task(account, request.path_params["task_id"])
        # not Starlette's {index:int}: its int() of a 5000-digit index raised (a 500)
        raw = request.path_params["index"]
        index = whole_number(raw)
        index = -1 if index is None else index
        if not 0 <= index < task.chunks_total:
            raise ApiError(404, f"the task has chunks 0 to {task.chunks_total - 1}")
        [info] = chunk_infos(self.core, task, index, 1)
        await self.runtime.flushed()  # answer once what it shows is durable
        history, output = await self.store.chunk_history(task.id, index)
        workers = await self.store.chunk_workers(task.id, index, index + 1)
        if info.state == "done":
            info = msgspec.structs.replace(info, worker=workers.get(index))
        preview = None
        if output is not None:
            shown = _outputs(output, task.items_in(index), msgspec.msgpack.Decoder(),
                             msgspec.json.Encoder())[:PREVIEW_ITEMS]
            text = (b"[" + b",".join(shown) + b"]").decode()
            preview = text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"
        return json_response(ChunkDetail(
            info, [ChunkAttempt(at, w, err, final) for at, w, err, final in history], preview))

    async def cancel(self, request: Request) -> Response:
        account = await authenticate(request, self.accounts, "customer")
        task = self._own_task(account, request.path_params["task_id"])
        reply = await self.runtime.call(TaskCancel(0, 0, task.id))
        if not reply.ok:
            raise ApiError(reply.status, reply.error)
        await self.accounts.audit.record("task.cancel", account, request, target=task.id)
        return json_response(task_info(self.core, task))

    async def fund(self, request: Request) -> Response:
        """Top up a task's escrow from its owner's wallet (the owner only)."""
        account = await authenticate(request, self.accounts, "customer")
        task = self.core.tasks.get(request.path_params["task_id"])
        if task is None or task.owner != account.id:
            raise ApiError(404, "no such task among yours; list them with `tn task list`")
        body = await decode_body(request, FundRequest)
        reply = await self.runtime.call(
            TaskFund(0, 0, task.id, check_amount(body.amount, self.config)))
        if not reply.ok:
            raise ApiError(reply.status, reply.error)
        await self.accounts.audit.record("task.fund", account, request, target=task.id,
                                         detail={"amount": body.amount})
        return json_response(task_info(self.core, task))

    async def pause(self, request: Request) -> Response:
        return await self._steer(request, TaskPause)

    async def resume(self, request: Request) -> Response:
        return await self._steer(request, TaskResume)

    async def _steer(self, request: Request, kind: type[TaskPause | TaskResume]) -> Response:
        account = await authenticate(request, self.accounts, "customer")
        task = self._own_task(account, request.path_params["task_id"])
        reply = await self.runtime.call(kind(0, 0, task.id))
        if not reply.ok:
            raise ApiError(reply.status, reply.error)
        return json_response(task_info(self.core, task))

    async def patch(self, request: Request) -> Response:
        account = await authenticate(request, self.accounts, "customer")
        task = self._own_task(account, request.path_params["task_id"])
        raw = await read_body(request, BODY_BYTES_MAX)
        try:
            body = msgspec.json.decode(raw, type=TaskPatch)
        except DECODE_ERRORS as exc:
            raise ApiError(400, f"bad body: {exc}; send JSON like "
                                '{"max_concurrency": 8, "priority": 7}') from None
        if body.max_concurrency is None and body.priority is None:
            raise ApiError(400, "nothing to change: send max_concurrency and/or priority")
        reply = await self.runtime.call(
            TaskUpdate(0, 0, task.id, body.max_concurrency, body.priority))
        if not reply.ok:
            raise ApiError(reply.status, reply.error)
        return json_response(task_info(self.core, task))

    async def code(self, request: Request) -> Response:
        account = await authenticate(request, self.accounts)
        task = self.core.tasks.get(request.path_params["task_id"])
        allowed = task is not None and (
            account.role == "admin" or task.owner == account.id
            or any(self.core.leases[lid].account_id == account.id
                   for lid in task.lease_of_chunk.values())
        )
        if task is None or not allowed:
            raise ApiError(404, "no such task among those you hold a lease on")
        data = await anyio.to_thread.run_sync(self.artifacts(task.id).code_zip)
        return Response(data, media_type="application/zip",
                        headers={"X-TN-Code-Ref": task.code_ref})

    async def results(self, request: Request) -> Response:
        account = await authenticate(request, self.accounts, "customer")
        task = self._own_task(account, request.path_params["task_id"])
        fmt = request.query_params.get("format", "json")
        if fmt not in ("json", "jsonl"):
            raise ApiError(400, "format must be json or jsonl", "format")
        partial = request.query_params.get("partial", "") in ("1", "true")
        if task.state is TaskState.RUNNING and not partial:
            raise ApiError(409, f"task is still running ({task.done} of {task.chunks_total} "
                                "chunks done); wait with `tn task watch`, or add ?partial=true")
        await self.runtime.flushed()
        media = "application/json" if fmt == "json" else "application/x-ndjson"
        return StreamingResponse(self._stream(task, fmt == "jsonl"), media_type=media)

    async def _stream(self, task: Task, lines: bool) -> AsyncIterator[bytes]:
        """Outputs in item order; items of chunks without a result are null (and so are
        outputs JSON cannot carry: see ``_outputs``)."""
        dec = msgspec.msgpack.Decoder()
        enc = msgspec.json.Encoder()
        sep = b"\n" if lines else b","
        first = True
        yield b"" if lines else b"["
        expected, after = 0, -1
        while True:
            rows = await self.store.result_rows(task.id, after, RESULT_PAGE_ROWS)
            for chunk, output in [*rows, *([(task.chunks_total, b"")] if not rows else [])]:
                parts: list[bytes] = []
                for missing in range(expected, chunk):
                    parts.extend([b"null"] * task.items_in(missing))
                if output:
                    parts.extend(_outputs(output, task.items_in(chunk), dec, enc))
                expected, after = chunk + 1, chunk
                if parts:
                    body = sep.join(parts)
                    yield body + b"\n" if lines else (body if first else b"," + body)
                    first = False
            if not rows:
                break
        if not lines:
            yield b"]"


def _parse_spec(raw: Any) -> TaskSpec:
    if raw is None:
        return TaskSpec()
    if isinstance(raw, UploadFile):
        raise ApiError(400, "send spec as a text field with JSON, not a file", "spec")
    try:
        spec = msgspec.json.decode(raw.encode(), type=TaskSpec)
        validate_requirements(spec.requirements)
    except (msgspec.DecodeError, msgspec.ValidationError, RequirementError) as exc:
        raise ApiError(400, f"bad spec: {exc}", "spec") from None
    if spec.verification == "quorum" and not (
            spec.quorum_k >= 2 and spec.quorum_k // 2 < spec.quorum_m <= spec.quorum_k):
        raise ApiError(400, "bad spec: quorum needs 2 <= quorum_k and a majority quorum_m "
                            "(quorum_k // 2 < quorum_m <= quorum_k), e.g. 2 of 3", "spec")
    return spec


def _outputs(output: bytes, items: int, dec: msgspec.msgpack.Decoder[Any],
             enc: msgspec.json.Encoder) -> list[bytes]:
    """The JSON of each of a stored result's ``items`` outputs. The core checks only that a
    worker's result is an array of the right length, so an output JSON cannot carry (a
    MessagePack extension, a map keyed by null, bool or array, invalid UTF-8, nesting past
    the decoder's depth) reads as null rather than breaking the download midway."""
    try:
        values = dec.decode(output)
    except DECODE_ERRORS:
        return [b"null"] * items
    if not isinstance(values, list) or len(values) != items:
        return [b"null"] * items
    out = []
    for value in values:
        try:
            out.append(enc.encode(value))
        except (TypeError, ValueError, RecursionError):
            out.append(b"null")
    return out

