"""Parent side of a worker slot: one long-lived child process running customer code.

``SlotRunner`` spawns ``python -m client.worker.child`` with a minimal environment, a private
scratch directory as its working directory and HOME, and an output log file as its stderr. It
sends each chunk as one frame and waits for the reply under the chunk's wall-clock deadline.

Code switching: a child only ever loads one code digest. When ``run`` is called with a different
digest the runner kills the child and starts a fresh one (about the cost of a Python start plus
msgspec import), so one task's modules, monkeypatches and background threads never share a
process with another task's data. Runs of the same digest reuse the warm child and its imported
module. After a deadline, crash or protocol violation the child is killed (with its whole
process group) and a fresh one is started before ``run`` raises.

Sandbox: each child gets a private directory with ``work/`` (its scratch: working directory,
HOME and TMPDIR, a size-capped tmpfs inside the child when namespaces are available) and
``code/``, where the runner puts a copy of the task's code (hard links where possible) before
the child's first chunk. The child confines itself (``client.sandbox``) before answering
``Ready``, so the only task files it can ever read are that copy and its scratch. A root
worker's child drops to uid 65534 (see ``client.sandbox.namespaces``), so the runner keeps that
copy readable by every uid whatever the umask or the cache's modes: its directories are 0755,
and a file others may not read is copied (not linked) and made readable, so the cache's own
modes never change. The child's
CPU time is reported with every reply; a child that has used half of its lifetime CPU backstop
is replaced before its next chunk, so the backstop never cuts an honest chunk short.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import cast

import msgspec

import client
from client.sandbox import LAYER_NAMES, MODES, layer_name
from client.sandbox.rlimit import CPU_RECYCLE_FRACTION
from client.worker.channel import Child as _Child
from client.worker.channel import ChildProtocol as _ChildProtocol
from client.worker.child import (
    REASON_CHARS_MAX,
    Done,
    Failed,
    Init,
    Ready,
    Run,
)

__all__ = [
    "ChildStartError",
    "ChunkFailed",
    "RunnerLimits",
    "SandboxRefused",
    "SlotRunner",
    "probe_sandbox",
]

START_TIMEOUT_S = 30.0  # spawn until Ready
REAP_TIMEOUT_S = 5.0  # SIGKILL until the exit is observed
FRAME_SLACK_BYTES = (64 << 10) + 4 * REASON_CHARS_MAX  # frame overhead on top of output_bytes_max

_PROJECT_ROOT = str(Path(client.__file__).resolve().parent.parent)


class ChunkFailed(Exception):
    """The chunk did not produce an output. ``retryable`` is False for deterministic code bugs."""

    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class ChildStartError(RuntimeError):
    """The child process could not be started or did not become ready."""


class SandboxRefused(ChildStartError):
    """The child could not set up the sandbox it was asked for (e.g. strict, layers missing)."""


@dataclass(frozen=True)
class RunnerLimits:
    memory_bytes: int = 1 << 30  # RLIMIT_AS for the child
    open_files: int = 256  # RLIMIT_NOFILE
    file_size_bytes: int = 64 << 20  # RLIMIT_FSIZE (also caps one chunk's captured output)
    cpu_seconds_backstop: int = 3600  # RLIMIT_CPU over the child's whole life; only a backstop
    output_bytes_max: int = 16 << 20  # max size of a chunk's encoded output
    log_bytes_max: int = 64 << 10  # customer stdout/stderr tail kept per failed chunk
    scratch_bytes_max: int = 256 << 20  # the scratch tmpfs (with the namespaces layer)
    tmp_bytes_max: int = 64 << 20  # the private /tmp tmpfs (with the namespaces layer)
    sandbox: str = "auto"  # "auto": the layers the machine offers; "strict": refuse without
    # namespaces, landlock and seccomp
    sandbox_skip: frozenset[str] = frozenset()  # layers to leave out (tests, diagnosis)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "sandbox":
                if value not in MODES:
                    raise ValueError(f"RunnerLimits.sandbox must be one of {MODES}, got {value!r}")
            elif f.name == "sandbox_skip":
                unknown = set(value) - set(LAYER_NAMES)
                if unknown:
                    raise ValueError(
                        f"RunnerLimits.sandbox_skip: unknown layers {sorted(unknown)}; "
                        f"known: {', '.join(LAYER_NAMES)}"
                    )
            elif not isinstance(value, int) or value <= 0:
                raise ValueError(f"RunnerLimits.{f.name} must be a positive int, got {value!r}")


class _ChildLost(Exception):
    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class SlotRunner:
    """Runs chunks in one long-lived child process. One ``run`` at a time."""

    def __init__(self, limits: RunnerLimits, python: str = sys.executable) -> None:
        self._limits = limits
        self._python = python
        self._child: _Child | None = None
        self._dying: list[_Child] = []  # killed, not yet reaped (only after a cancelled run)
        self._busy = False
        self._closed = False

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def layers(self) -> list[str]:
        """The sandbox layers the current child reported as active."""
        return list(self._child.layers) if self._child is not None else []

    @property
    def missing_layers(self) -> list[str]:
        """``"name: why"`` for each sandbox layer the current child could not use."""
        return list(self._child.missing) if self._child is not None else []

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("SlotRunner is closed; create a new one")
        await self._reap_dying()
        if self._child is None:
            self._child = await self._spawn()

    async def close(self) -> None:
        self._closed = True
        child, self._child = self._child, None
        if child is not None:
            child.kill()
            self._dying.append(child)
        await self._reap_dying()

    async def run(
        self,
        code_dir: Path,
        code_digest: str,
        items: bytes,
        deadline_s: float,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> bytes:
        if self._busy:
            raise RuntimeError("SlotRunner.run() is already running; use one runner per slot")
        if not deadline_s > 0:
            raise ValueError(f"deadline_s must be positive, got {deadline_s!r}")
        self._busy = True
        try:
            return await self._run(code_dir, code_digest, items, deadline_s, on_progress)
        finally:
            self._busy = False

    async def _run(
        self,
        code_dir: Path,
        code_digest: str,
        items: bytes,
        deadline_s: float,
        on_progress: Callable[[int, int], None] | None,
    ) -> bytes:
        child = self._child
        if child is not None and (
            child.digest not in (None, code_digest)
            or child.protocol.exit_code is not None
            or child.retire
        ):
            await self._replace_child()  # new code, died between chunks, or CPU backstop
        await self.start()
        child = self._child
        assert child is not None
        if child.digest is None:
            await _install_code(Path(os.path.abspath(code_dir)), child.code_dir)
        child.digest = code_digest
        child.protocol.progress = None
        child.protocol.progress_done = 0
        path = str(child.code_dir)  # the child's private copy: the only code it can read
        child.send(Run(path, code_digest, msgspec.Raw(items), on_progress is not None))
        try:
            async with asyncio.timeout(deadline_s) as scope:
                reply = await self._await_reply(child, on_progress)
        except TimeoutError:
            if not scope.expired():
                self._abandon_child()
                raise
            await self._replace_child()
            raise ChunkFailed(
                f"exceeded the {deadline_s:g} s chunk deadline; the worker child was killed "
                "and restarted",
                retryable=True,
            ) from None
        except _ChildLost as lost:
            reason = self._with_output_tail(lost.reason, child)
            await self._replace_child()
            raise ChunkFailed(reason, lost.retryable) from None
        except BaseException:  # cancelled, or on_progress raised: the child is out of step
            self._abandon_child()
            raise
        if reply.cpu_ms >= self._limits.cpu_seconds_backstop * 1000 * CPU_RECYCLE_FRACTION:
            child.retire = True
        if isinstance(reply, Failed):
            raise ChunkFailed(self._with_output_tail(reply.reason, child), reply.retryable)
        if on_progress is not None and reply.count > child.protocol.progress_done:
            on_progress(reply.count, reply.count)
        return bytes(reply.output)

    async def _await_reply(
        self, child: _Child, on_progress: Callable[[int, int], None] | None
    ) -> Done | Failed:
        proto = child.protocol
        while True:
            await proto.wait()
            progress, proto.progress = proto.progress, None
            if progress is not None and on_progress is not None:
                proto.progress_done = progress.done
                on_progress(progress.done, progress.total)
            reply, proto.reply = proto.reply, None
            if isinstance(reply, Done | Failed):
                return reply
            if reply is not None:
                raise _ChildLost(f"the worker child sent an unexpected {reply!r}", False)
            if proto.violation is not None:
                raise _ChildLost(proto.violation, retryable=False)
            if proto.exit_code is not None:
                raise _ChildLost(self._describe_exit(proto.exit_code), retryable=True)

    def _describe_exit(self, code: int) -> str:
        if code >= 0:
            return (
                f"the worker child exited with exit code {code} during the chunk (customer code "
                "called os._exit() or the interpreter aborted); it has been restarted"
            )
        hints = {
            signal.SIGKILL: "by the customer code, another process, or the kernel's "
            "out-of-memory killer",
            signal.SIGXCPU: f"the child used up its CPU-time backstop of "
            f"{self._limits.cpu_seconds_backstop} s",
            signal.SIGSEGV: "usually a crash in native code",
            signal.SIGXFSZ: f"a file grew past {self._limits.file_size_bytes} bytes",
        }
        try:
            sig = signal.Signals(-code)
        except ValueError:
            name, hint = f"signal {-code}", None
        else:
            name, hint = sig.name, hints.get(sig)
        return (
            f"the worker child was killed by {name}"
            + (f" ({hint})" if hint else "")
            + " during the chunk; it has been restarted"
        )

    def _with_output_tail(self, reason: str, child: _Child, label: str = "customer output") -> str:
        tail, dropped = _read_tail(child.log_path, self._limits.log_bytes_max)
        if not tail:
            return reason
        note = ", earlier output dropped" if dropped else ""
        return f"{reason}\n--- {label} (last {len(tail)} chars{note}) ---\n{tail}"

    async def _spawn(self) -> _Child:
        """Start a child and wait for its Ready; raise ChildStartError if it does not come."""
        child = await self._launch()
        lim = self._limits
        child.send(
            Init(
                lim.memory_bytes,
                lim.open_files,
                lim.file_size_bytes,
                lim.cpu_seconds_backstop,
                lim.output_bytes_max,
                scratch_dir=str(child.base_dir / "work"),
                code_dir=str(child.code_dir),
                scratch_bytes_max=lim.scratch_bytes_max,
                tmp_bytes_max=lim.tmp_bytes_max,
                sandbox=lim.sandbox,
                skip=sorted(lim.sandbox_skip),
            )
        )
        proto = child.protocol
        problem = f"it did not answer within {START_TIMEOUT_S:g} s"
        refusal: str | None = None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await proto.wait()
                ready, proto.reply = proto.reply, None
                if isinstance(ready, Ready):
                    child.layers = list(ready.layers)
                    child.missing = list(ready.missing)
                    return child
                if isinstance(ready, Failed):
                    refusal = ready.reason
                problem = proto.violation or (
                    f"it exited with code {proto.exit_code}"
                    if proto.exit_code is not None
                    else f"it answered {ready or proto.progress!r}"
                )
        except TimeoutError:
            pass
        except BaseException:
            self._dying.append(child)
            await self._reap_dying()
            raise
        reason = self._with_output_tail(
            f"the worker child did not become ready: {problem}", child, "worker child stderr"
        )
        self._dying.append(child)
        await self._reap_dying()
        if refusal is not None:
            raise SandboxRefused(f"the worker child refused to start: {refusal}")
        raise ChildStartError(
            f"{reason}\nCheck that {self._python} can import msgspec and the client package "
            f"from {_PROJECT_ROOT}."
        )

    async def _launch(self) -> _Child:
        loop = asyncio.get_running_loop()
        # realpath: the child compares these paths with what it sees after mounting its own /tmp
        base = Path(os.path.realpath(tempfile.mkdtemp(prefix="tn-slot-")))
        work = base / "work"
        work.mkdir()
        (base / "code").mkdir()
        os.chmod(base / "code", 0o755)  # a root worker's child reads it as uid 65534
        log_path = base / "output.log"
        frame_max = self._limits.output_bytes_max + FRAME_SLACK_BYTES
        exited: asyncio.Future[int] = loop.create_future()
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _ChildProtocol(frame_max, exited),
                self._python,
                "-s",  # no user site-packages
                "-P",  # no script or cwd directory on sys.path
                "-m",
                "client.worker.child",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_fd,
                cwd=work,
                env=_child_env(work),
                start_new_session=True,
            )
        except BaseException as exc:
            shutil.rmtree(base, ignore_errors=True)
            if isinstance(exc, OSError):
                raise ChildStartError(
                    f"could not start the worker child with {self._python!r}: {exc}"
                ) from exc
            raise
        finally:
            os.close(log_fd)
        stdin = cast(asyncio.WriteTransport, transport.get_pipe_transport(0))
        return _Child(transport, protocol, stdin, transport.get_pid(), base, log_path)

    def _abandon_child(self) -> None:
        """Kill the child without awaiting (safe under cancellation); reaped later."""
        child, self._child = self._child, None
        if child is not None:
            child.kill()
            self._dying.append(child)

    async def _replace_child(self) -> None:
        self._abandon_child()
        await self._reap_dying()
        if self._closed:
            return
        try:
            self._child = await self._spawn()
        except ChildStartError:
            self._child = None  # the next run() tries again and raises the start error

    async def _reap_dying(self) -> None:
        for child in list(self._dying):  # a snapshot: close() may run while run() reaps
            child.kill()
            await asyncio.wait({child.protocol.exited}, timeout=REAP_TIMEOUT_S)
            child.transport.close()
            if child in self._dying:
                self._dying.remove(child)
                await asyncio.to_thread(shutil.rmtree, child.base_dir, True)


async def probe_sandbox(
    limits: RunnerLimits, python: str = sys.executable
) -> tuple[list[str], list[str]]:
    """Start one child to learn which sandbox layers are active and which are missing (why).

    Raises ``SandboxRefused`` when ``limits.sandbox`` is ``strict`` and a required layer is
    missing, ``ChildStartError`` when no child can be started at all.
    """
    runner = SlotRunner(limits, python)
    try:
        await runner.start()
        return runner.layers, runner.missing_layers
    finally:
        await runner.close()


def layer_names(lines: list[str]) -> list[str]:
    """The layer names of ``"name: ..."`` lines, in order."""
    return [layer_name(line) for line in lines]


async def _install_code(src: Path, dest: Path) -> None:
    """Give a child its own copy of the task's code: hard links where possible, else copies.

    Symlinks are copied as symlinks, never followed, so a link in the task's code cannot pull
    a worker file into the sandbox.
    """
    if not (src / "main.py").is_file():
        raise ChunkFailed(
            f"{src / 'main.py'} does not exist; the task's code must contain main.py defining "
            "process(item) or process_chunk(items)",
            retryable=False,
        )
    as_root = os.geteuid() == 0  # then the child reads the copy as uid 65534
    try:
        await asyncio.to_thread(
            shutil.copytree,
            src,
            dest,
            symlinks=True,
            dirs_exist_ok=True,
            copy_function=_link_or_copy_readable if as_root else _link_or_copy,
        )
        if as_root:
            await asyncio.to_thread(_open_dirs, dest)
    except (OSError, shutil.Error) as exc:
        raise ChunkFailed(
            f"could not give the worker child a copy of the task's code: {exc}", retryable=True
        ) from None


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _link_or_copy_readable(src: str, dst: str) -> None:
    """Link a file everyone may read; copy any other and make the copy readable."""
    mode = os.lstat(src).st_mode
    if mode & 0o004:
        _link_or_copy(src, dst)
        return
    shutil.copy2(src, dst, follow_symlinks=False)
    os.chmod(dst, (mode & 0o777) | 0o444)


def _open_dirs(root: Path) -> None:
    """Directories of a code copy: 0755 (copytree gave them the cache's modes)."""
    for path, _, _ in os.walk(root):
        os.chmod(path, 0o755)


def _child_env(work: Path) -> dict[str, str]:
    """A minimal environment: nothing from the parent's secrets (never TN_TOKEN)."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "PYTHONPATH": _PROJECT_ROOT,
        "LANG": "C.UTF-8",
        "HOME": str(work),
        "TMPDIR": str(work),
    }


def _read_tail(path: Path, max_bytes: int) -> tuple[str, bool]:
    """The last ``max_bytes`` of a file as text, and whether earlier bytes were dropped."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(max_bytes)
    except OSError:
        return "", False
    return data.decode("utf-8", "replace").strip(), start > 0
