"""A raw worker session for the e2e tests: the protocol spoken by hand, MessagePack Structs of
schema/worker.py over a ``websockets`` client connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from schema import worker as w
from tests.e2e.harness import Coordinator

ENC = msgspec.msgpack.Encoder()
DEC = msgspec.msgpack.Decoder(w.CoordinatorMessage)
M = TypeVar("M")


class Peer:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.welcome: w.Welcome | None = None

    async def send(self, msg: w.WorkerMessage) -> None:
        await self.ws.send(ENC.encode(msg))

    async def send_raw(self, frame: bytes | str) -> None:
        await self.ws.send(frame)

    async def recv(self, timeout_s: float = 5.0) -> w.CoordinatorMessage:
        async with asyncio.timeout(timeout_s):
            frame = await self.ws.recv()
        assert isinstance(frame, bytes), f"the coordinator sent a text frame: {frame!r}"
        return DEC.decode(frame)

    async def expect(self, kind: type[M], timeout_s: float = 5.0) -> M:
        msg = await self.recv(timeout_s)
        assert isinstance(msg, kind), f"expected {kind.__name__}, got {msg!r}"
        return msg

    async def until_closed(self, timeout_s: float = 5.0) -> tuple[int | None, list[Any]]:
        """Messages received until the coordinator closes, and the close code."""
        got: list[Any] = []
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(timeout_s):
                while True:
                    got.append(DEC.decode(await self.ws.recv()))
        return self.ws.close_code, got


@contextlib.asynccontextmanager
async def session(coord: Coordinator, worker_id: str | None = None,
                  **hello: Any) -> AsyncIterator[Peer]:
    """A raw worker connection; with ``worker_id`` it says hello and reads the welcome."""
    async with connect(coord.ws_url + "/ws/worker", compression=None) as ws:
        peer = Peer(ws)
        if worker_id is not None:
            await peer.send(w.Hello(worker_id, hello.pop("token", coord.worker_token), **hello))
            peer.welcome = await peer.expect(w.Welcome)
        yield peer


def items_of(assign: w.Assign) -> list[Any]:
    items: list[Any] = msgspec.msgpack.decode(bytes(assign.items))
    return items


def output(values: list[Any]) -> msgspec.Raw:
    return msgspec.Raw(ENC.encode(values))
