"""The parent's side of one child's protocol channel: length-prefixed MessagePack frames
parsed from its stdout into a small mailbox, and the handle the runner keeps per child."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import msgspec

from client.worker.child import HEADER_BYTES, ChildMsg, Done, Failed, ParentMsg, Progress, Ready

_DECODER = msgspec.msgpack.Decoder(ChildMsg)
_ENCODER = msgspec.msgpack.Encoder()


class ChildProtocol(asyncio.SubprocessProtocol):
    """Parses frames from the child's stdout into a small mailbox that ``run`` waits on.

    The mailbox is bounded: at most one reply and the latest progress report.
    """

    def __init__(self, frame_bytes_max: int, exited: asyncio.Future[int]) -> None:
        self._frame_bytes_max = frame_bytes_max
        self._buf = bytearray()
        self._wake: asyncio.Future[None] | None = None
        self.exited = exited
        self.reply: Ready | Done | Failed | None = None
        self.progress: Progress | None = None
        self.progress_done = 0  # the last done count passed to on_progress
        self.violation: str | None = None
        self.exit_code: int | None = None
        self.transport: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transport does not subclass asyncio.SubprocessTransport, but has its methods.
        self.transport = cast(asyncio.SubprocessTransport, transport)

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        if fd != 1 or self.violation is not None:
            return
        if self._buf:
            self._buf += data
            used = self._parse(self._buf)
            del self._buf[:used]
        else:
            used = self._parse(data)
            if used < len(data):
                self._buf += memoryview(data)[used:]

    def _parse(self, src: bytes | bytearray) -> int:
        """Handle every complete frame in ``src``; return how many bytes were used."""
        offset = 0
        end = len(src)
        with memoryview(src) as view:
            while end - offset >= HEADER_BYTES and self.violation is None:
                size = int.from_bytes(view[offset : offset + HEADER_BYTES], "big")
                if size > self._frame_bytes_max:
                    self._violate(f"a {size}-byte frame, over the {self._frame_bytes_max} limit")
                    break
                start = offset + HEADER_BYTES
                if end - start < size:
                    break
                frame = bytes(view[start : start + size])
                offset = start + size
                try:
                    msg = _DECODER.decode(frame)
                except msgspec.DecodeError as exc:
                    self._violate(f"a malformed frame ({exc})")
                    break
                self._deliver(msg)
        return offset

    def _deliver(self, msg: ChildMsg) -> None:
        if isinstance(msg, Progress):
            self.progress = msg
        elif self.reply is not None:
            self._violate("two replies to one request")
        else:
            self.reply = msg
        self._wakeup()

    def _violate(self, what: str) -> None:
        self.violation = (
            f"the worker child sent {what} on its protocol channel; customer code must not "
            "write to the worker's private file descriptors"
        )
        self._wakeup()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1 and self.exit_code is None and self.violation is None:
            # Usually the child is exiting and process_exited follows; if it lives on with its
            # protocol channel closed, run() must not wait for the deadline.
            asyncio.get_running_loop().call_later(1.0, self._lost_channel)

    def _lost_channel(self) -> None:
        if self.exit_code is None and self.violation is None:
            self._violate("nothing: it closed its protocol channel")

    def process_exited(self) -> None:
        assert self.transport is not None
        code = self.transport.get_returncode()
        self.exit_code = -1 if code is None else code
        if not self.exited.done():
            self.exited.set_result(self.exit_code)
        self._wakeup()

    def _wakeup(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def wait(self) -> None:
        """Return when the mailbox holds something or the child has gone."""
        if self.reply or self.progress or self.violation or self.exit_code is not None:
            return
        self._wake = asyncio.get_running_loop().create_future()
        try:
            await self._wake
        finally:
            self._wake = None


@dataclass(eq=False)
class Child:
    transport: asyncio.SubprocessTransport
    protocol: ChildProtocol
    stdin: asyncio.WriteTransport
    pid: int
    base_dir: Path
    log_path: Path
    layers: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    digest: str | None = None
    retire: bool = False  # replace before the next chunk (CPU backstop half used)

    @property
    def code_dir(self) -> Path:
        return self.base_dir / "code"

    def send(self, msg: ParentMsg) -> None:
        body = _ENCODER.encode(msg)
        self.stdin.write(len(body).to_bytes(HEADER_BYTES, "big") + body)

    def kill(self) -> None:
        """SIGKILL the child's whole process group (it leads its own session)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
