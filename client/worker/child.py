"""The program inside a worker child process: ``python -m client.worker.child``.

One long-lived child serves one slot. The parent (``client.worker.runner.SlotRunner``) talks to
it with length-prefixed frames: a 4-byte big-endian length, then one MessagePack message from the
tagged unions below. The parent writes to the child's stdin; the child answers on its original
stdout.

At start the child moves the protocol onto private file descriptors: fd 0 becomes /dev/null and
fd 1 is pointed at fd 2, which the parent opened as an output log file. Whatever customer code
prints (``print``, ``os.write(1, ...)``, child processes) lands in that log and can never corrupt
a frame. The log is truncated at the start of each chunk, so after a failure the parent reads the
tail of the failing chunk's output.

A child loads the code of one digest only. To run a different task's code the parent starts a
fresh child, so one customer's modules, monkeypatches and threads never see another's data.

Before answering ``Ready`` the child confines itself with the layers of ``client.sandbox``
(resource limits, namespaces, no capabilities, Landlock, seccomp): its scratch directory is the
only place it can write and its code directory (a private copy the parent makes) the only task
path it can read; a root worker's child ends up as uid/gid 65534 for real. It does this while it
is still a single thread and before any customer code is imported. A failure that the sandbox
explains (a denied system call, a full scratch space, a file over the size limit, the memory
cap) gets a ``sandbox:`` line in the failure reason.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import os
import signal
import stat
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from client.sandbox import (
    SandboxConfig,
    SandboxError,
    SandboxLimits,
    apply_sandbox,
    missing_layers,
)
from client.sandbox.rlimit import fmt_bytes

# ---- protocol ------------------------------------------------------------------------------


class Init(msgspec.Struct, tag="init", array_like=True, frozen=True):
    """Parent -> child, first frame: apply this sandbox, then answer ``Ready``.

    Empty ``scratch_dir``/``code_dir`` mean none. ``skip`` names sandbox layers to leave out.
    A child that cannot satisfy ``sandbox`` ``strict`` answers ``Failed`` and exits.
    """

    memory_bytes: int
    open_files: int
    file_size_bytes: int
    cpu_seconds: int
    output_bytes_max: int
    scratch_dir: str = ""
    code_dir: str = ""
    scratch_bytes_max: int = 256 << 20
    tmp_bytes_max: int = 64 << 20
    sandbox: str = "auto"
    skip: list[str] = []


class Run(msgspec.Struct, tag="run", array_like=True, frozen=True):
    """Parent -> child: run one chunk. ``items`` is the chunk's MessagePack array, as sent."""

    code_dir: str
    code_digest: str
    items: msgspec.Raw
    progress: bool = False


class Ready(msgspec.Struct, tag="ready", array_like=True, frozen=True):
    """The active sandbox layers, one line each, and ``"name: why"`` for each missing one."""

    pid: int
    layers: list[str]
    missing: list[str] = []


class Progress(msgspec.Struct, tag="progress", array_like=True, frozen=True):
    done: int
    total: int


class Done(msgspec.Struct, tag="done", array_like=True, frozen=True):
    """The chunk's outputs: a MessagePack array with ``count`` values."""

    output: msgspec.Raw
    count: int
    cpu_ms: int = 0  # CPU time the child has used in its life so far


class Failed(msgspec.Struct, tag="failed", array_like=True, frozen=True):
    reason: str
    retryable: bool
    cpu_ms: int = 0


ParentMsg = Init | Run
ChildMsg = Ready | Progress | Done | Failed

HEADER_BYTES = 4
PROGRESS_INTERVAL_S = 0.1  # at most ~10 progress frames per second
REASON_CHARS_MAX = 8000  # failure reasons are cut to their last this-many characters
TRACEBACK_LINES_MAX = 40
JSON_DEPTH_MAX = 64
_PR_SET_PDEATHSIG = 1

# ---- output validation -----------------------------------------------------------------------

_SCALARS = frozenset({type(None), bool, int, float, str})


def json_problem(value: object, depth: int = 0) -> tuple[str, str] | None:
    """``None`` if ``value`` is JSON-like, else ``(path, problem)`` for the first bad part.

    Accepted: None, bool, int, float, str (and subclasses of int/float/str), list and tuple
    (sent as arrays), dict with str keys. Anything else (set, bytes, objects, ...) is rejected.
    """
    kind = type(value)
    if kind in _SCALARS:
        return None
    if depth >= JSON_DEPTH_MAX:
        return "", f"nesting is deeper than {JSON_DEPTH_MAX} levels (or the value contains itself)"
    if isinstance(value, list | tuple):
        for i, element in enumerate(value):
            if type(element) in _SCALARS:
                continue
            bad = json_problem(element, depth + 1)
            if bad is not None:
                return f"[{i}]{bad[0]}", bad[1]
        return None
    if isinstance(value, dict):
        for key, element in value.items():
            if not isinstance(key, str):
                kind_name = type(key).__name__
                return "", f"has a dict key of type {kind_name} ({key!r:.40}); keys must be str"
            if type(element) in _SCALARS:
                continue
            bad = json_problem(element, depth + 1)
            if bad is not None:
                return f"[{key!r:.40}]{bad[0]}", bad[1]
        return None
    if isinstance(value, int | float | str):
        return None
    return "", f"is of type {kind.__module__}.{kind.__qualname__}, which is not JSON-serialisable"


def _bad_output_reason(index: int, bad: tuple[str, str]) -> str:
    path, problem = bad
    where = f"item {index}" + (f", at {path}" if path else "")
    return (
        f"the output for {where} {problem}; return only None, bool, int, float, str, "
        "list or dict with str keys"
    )


# ---- customer code -------------------------------------------------------------------------


class Rejected(Exception):
    """A deterministic problem with the customer's code or output: do not retry."""


class Code:
    """The imported customer module and its entry point."""

    def __init__(self, module: Any) -> None:
        chunk_fn = getattr(module, "process_chunk", None)
        item_fn = getattr(module, "process", None)
        if callable(chunk_fn):  # process_chunk wins when both are defined
            self.process_chunk: Callable[[list[Any]], Any] | None = chunk_fn
            self.process: Callable[[Any], Any] | None = None
        elif callable(item_fn):
            self.process_chunk = None
            self.process = item_fn
        else:
            raise Rejected(
                "main.py defines neither process(item) nor process_chunk(items); "
                "define one of them at module level"
            )


def module_name(digest: str) -> str:
    safe = "".join(c for c in digest if c.isalnum())[:40] or "nodigest"
    return f"tn_task_main_{safe}"


def import_code(code_dir: str, digest: str) -> Code:
    main_py = Path(code_dir) / "main.py"
    if not main_py.is_file():
        raise Rejected(
            f"{main_py} does not exist; the task's code must contain main.py defining "
            "process(item) or process_chunk(items)"
        )
    sys.dont_write_bytecode = True  # leave the code dir exactly as its digest describes it
    if not sys.path or sys.path[0] != code_dir:
        sys.path.insert(0, code_dir)
    name = module_name(digest)
    spec = importlib.util.spec_from_file_location(name, main_py)
    if spec is None or spec.loader is None:
        raise Rejected(f"could not load {main_py} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return Code(module)


def format_failure(exc: BaseException, skip_frames: int = 1) -> str:
    """The last lines of the traceback, without this module's own frames."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    lines = "".join(traceback.format_exception(type(exc), exc, tb)).rstrip().splitlines()
    return "\n".join(lines[-TRACEBACK_LINES_MAX:])


def clip(reason: str) -> str:
    if len(reason) <= REASON_CHARS_MAX:
        return reason
    return "[...]" + reason[-REASON_CHARS_MAX:]


# ---- the child loop ------------------------------------------------------------------------


class Channel:
    """Frames over two private, blocking file descriptors."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._reader = os.fdopen(read_fd, "rb", buffering=1 << 16)
        self._write_fd = write_fd
        self._decoder = msgspec.msgpack.Decoder(ParentMsg)
        self._encoder = msgspec.msgpack.Encoder()
        self._buf = bytearray()

    def recv(self) -> ParentMsg | None:
        """The next message, or ``None`` when the parent has gone away."""
        head = self._reader.read(HEADER_BYTES)
        if len(head) < HEADER_BYTES:
            return None
        size = int.from_bytes(head, "big")
        body = self._reader.read(size)
        if len(body) < size:
            return None
        msg: ParentMsg = self._decoder.decode(body)
        return msg

    def send(self, msg: ChildMsg) -> None:
        buf = self._buf
        self._encoder.encode_into(msg, buf, HEADER_BYTES)
        buf[:HEADER_BYTES] = (len(buf) - HEADER_BYTES).to_bytes(HEADER_BYTES, "big")
        written = os.write(self._write_fd, buf)
        if written < len(buf):
            with memoryview(buf) as view:
                while written < len(buf):
                    written += os.write(self._write_fd, view[written:])
        if len(buf) > 1 << 20:
            self._buf = bytearray()  # do not keep a large output's buffer alive


class Child:
    def __init__(
        self, channel: Channel, log_fd: int, output_bytes_max: int, init: Init | None = None
    ) -> None:
        self._channel = channel
        self._init = init
        self._log_fd = log_fd
        self._log_is_file = stat.S_ISREG(os.fstat(log_fd).st_mode)
        self._output_bytes_max = output_bytes_max
        self._items_decoder = msgspec.msgpack.Decoder(list[Any])
        self._encoder = msgspec.msgpack.Encoder()
        self._digest: str | None = None
        self._code: Code | None = None

    def serve(self) -> None:
        while True:
            try:
                msg = self._channel.recv()
            except msgspec.DecodeError as exc:
                # The frame boundary is intact, so the channel is still in step.
                self._channel.send(Failed(f"the run request could not be decoded: {exc}", False))
                continue
            if msg is None:
                return
            if isinstance(msg, Run):
                reply = self.run(msg)
                _flush_customer_streams()
                cpu_ms = int(time.process_time() * 1000)
                self._channel.send(msgspec.structs.replace(reply, cpu_ms=cpu_ms))
            else:
                self._channel.send(Failed("unexpected second init frame", retryable=False))

    def run(self, msg: Run) -> Done | Failed:
        self._reset_log()
        try:
            code = self._load(msg.code_dir, msg.code_digest)
        except Rejected as exc:
            return Failed(clip(str(exc)), retryable=False)
        except BaseException as exc:
            reason = f"importing main.py failed:\n{format_failure(exc)}"
            return Failed(clip(self._explain(reason, exc)), True)
        try:
            items = self._items_decoder.decode(msg.items)
        except msgspec.DecodeError as exc:
            return Failed(f"the chunk's items are not a MessagePack array: {exc}", False)
        try:
            if code.process_chunk is not None:
                outputs = self._run_chunk(code.process_chunk, items)
            else:
                assert code.process is not None
                outputs = self._run_items(code.process, items, msg.progress)
            return Done(msgspec.Raw(self._encode(outputs)), len(outputs))
        except Rejected as exc:
            return Failed(clip(str(exc)), retryable=False)
        except _CustomerError as exc:
            return Failed(clip(exc.reason), retryable=True)

    def _load(self, code_dir: str, digest: str) -> Code:
        if self._digest is None:
            self._digest = digest  # this child now belongs to this code, even if import fails
        elif digest != self._digest:
            raise Rejected(
                f"this worker child already ran code {self._digest[:16]}; the runner must "
                "start a new child to switch code (runner bug)"
            )
        if self._code is None:
            self._code = import_code(code_dir, digest)
        return self._code

    def _run_items(self, fn: Callable[[Any], Any], items: list[Any], progress: bool) -> list[Any]:
        total = len(items)
        outputs: list[Any] = []
        last_report = time.monotonic()
        for index, item in enumerate(items):
            try:
                result = fn(item)
            except BaseException as exc:
                reason = f"process() raised on item {index}:\n{format_failure(exc)}"
                raise _CustomerError(self._explain(reason, exc)) from None
            if type(result) not in _SCALARS:
                bad = json_problem(result)
                if bad is not None:
                    raise Rejected(_bad_output_reason(index, bad))
            outputs.append(result)
            if progress and index + 1 < total:  # the Done frame reports the last item
                now = time.monotonic()
                if now - last_report >= PROGRESS_INTERVAL_S:
                    last_report = now
                    self._channel.send(Progress(index + 1, total))
        return outputs

    def _run_chunk(self, fn: Callable[[list[Any]], Any], items: list[Any]) -> list[Any]:
        total = len(items)
        try:
            result = fn(items)
        except BaseException as exc:
            reason = f"process_chunk() raised on a chunk of {total} items:\n{format_failure(exc)}"
            raise _CustomerError(self._explain(reason, exc)) from None
        if not isinstance(result, list | tuple):
            raise Rejected(
                f"process_chunk() must return a list with one output per item; "
                f"it returned a {type(result).__name__}"
            )
        if len(result) != total:
            raise Rejected(
                f"process_chunk() returned {len(result)} outputs for {total} items; "
                "it must return exactly one output per item, in order"
            )
        for index, value in enumerate(result):
            if type(value) not in _SCALARS:
                bad = json_problem(value)
                if bad is not None:
                    raise Rejected(_bad_output_reason(index, bad))
        return list(result)

    def _encode(self, outputs: list[Any]) -> bytes:
        try:
            data = self._encoder.encode(outputs)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            index = _first_unencodable(self._encoder, outputs)
            raise Rejected(f"the output for item {index} cannot be encoded: {exc}") from None
        if len(data) > self._output_bytes_max:
            raise Rejected(
                f"the chunk's encoded output is {len(data)} bytes, over the "
                f"{self._output_bytes_max}-byte limit (output_bytes_max); return smaller "
                "values or split the work into smaller chunks"
            )
        return data

    def _explain(self, reason: str, exc: BaseException) -> str:
        """``reason`` with a ``sandbox:`` line when a sandbox limit explains ``exc``."""
        hint = sandbox_hint(exc, self._init) if self._init is not None else None
        return f"{reason}\nsandbox: {hint}" if hint else reason

    def _reset_log(self) -> None:
        if self._log_is_file and os.fstat(self._log_fd).st_size:
            os.ftruncate(self._log_fd, 0)


def sandbox_hint(exc: BaseException, init: Init) -> str | None:
    """What in the sandbox stopped ``exc`` (or an exception it was raised from), if anything."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:
        hint = _hint_one(cur, init)
        if hint is not None:
            return hint
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def _hint_one(exc: BaseException, init: Init) -> str | None:
    if isinstance(exc, MemoryError):
        return (
            f"out of memory: a worker child may use at most {fmt_bytes(init.memory_bytes)} "
            "of address space (memory_bytes)"
        )
    if not isinstance(exc, OSError):
        return None
    code = exc.errno
    if code in (errno.EPERM, errno.EACCES):
        return (
            "denied by the worker's sandbox: customer code may not use the network, start "
            "programs or processes, signal other processes, or touch files outside its code "
            "directory (read-only) and its scratch directory (the working directory, also $TMPDIR)"
        )
    if code == errno.EFBIG:
        return (
            f"a file reached the size limit of {fmt_bytes(init.file_size_bytes)} "
            "(file_size_bytes); printed output counts as a file too"
        )
    if code == errno.ENOSPC:
        return (
            f"the scratch space is full: {fmt_bytes(init.scratch_bytes_max)} in the scratch "
            f"directory and {fmt_bytes(init.tmp_bytes_max)} in /tmp"
        )
    if code == errno.EROFS:
        return "the code directory is read-only; write to the scratch directory instead"
    if code in (errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN):
        return "the worker's sandbox has no network"
    return None


class _CustomerError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _first_unencodable(encoder: msgspec.msgpack.Encoder, outputs: list[Any]) -> int:
    for index, value in enumerate(outputs):
        try:
            encoder.encode(value)
        except Exception:
            return index
    return -1


def _flush_customer_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # customer code may have closed or replaced the stream
            pass


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies, so an orphan never keeps running customer code."""
    parent = os.getppid()
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # best effort; the parent closing our stdin also ends the loop
    if os.getppid() != parent:
        os._exit(0)  # the parent died before prctl took effect


def _explain_shell_denial() -> None:
    """Make ``os.system`` raise under seccomp instead of returning exit status 127.

    The C library's ``system()`` turns the denied fork into a plain "shell could not run" status,
    which customer code easily ignores; a ``PermissionError`` says what happened.
    """

    def system(command: object) -> int:
        raise PermissionError(
            errno.EPERM,
            f"os.system({command!r:.60}) cannot start programs: the worker's sandbox forbids "
            "new processes",
        )

    setattr(os, "system", system)  # noqa: B010 (mypy would reject a direct assignment)


def main() -> None:
    _die_with_parent()
    # Protocol fds first, before anything can print. os.dup gives non-inheritable fds, so
    # subprocesses started by customer code do not get them.
    read_fd = os.dup(0)
    write_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # customer stdout joins stderr in the parent's output log
    log_fd = os.dup(2)
    channel = Channel(read_fd, write_fd)
    init = channel.recv()
    if not isinstance(init, Init):
        raise SystemExit("worker child: expected an init frame from the parent first")
    limits = SandboxLimits(
        memory_bytes=init.memory_bytes,
        open_files=init.open_files,
        file_size_bytes=init.file_size_bytes,
        cpu_seconds=init.cpu_seconds,
    )
    config = SandboxConfig(
        limits,
        scratch_dir=init.scratch_dir or None,
        code_dir=init.code_dir or None,
        scratch_bytes_max=init.scratch_bytes_max,
        tmp_bytes_max=init.tmp_bytes_max,
        mode=init.sandbox,
        skip=frozenset(init.skip),
    )
    try:
        layers = apply_sandbox(config)
    except (SandboxError, ValueError) as exc:
        channel.send(Failed(f"the sandbox could not be set up: {exc}", retryable=False))
        raise SystemExit(1) from None
    _die_with_parent()  # again: changing credentials may have cleared the parent-death signal
    if any(line.startswith("seccomp:") for line in layers):
        _explain_shell_denial()
    channel.send(Ready(os.getpid(), layers, missing_layers()))
    Child(channel, log_fd, init.output_bytes_max, init).serve()


if __name__ == "__main__":
    main()
