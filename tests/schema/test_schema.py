"""The wire schema: generated JSON Schema is fresh; decoders accept good and refuse bad."""

from __future__ import annotations

import msgspec
import pytest

from schema import gen, live, worker

WORKER_IN = msgspec.msgpack.Decoder(worker.WorkerMessage)
WORKER_OUT = msgspec.msgpack.Decoder(worker.CoordinatorMessage)
LIVE_IN = msgspec.json.Decoder(live.LiveClientMessage)
ENC = msgspec.msgpack.Encoder()


def test_json_schema_files_are_fresh() -> None:
    assert gen.stale() == [], "run `python -m schema.gen` and commit schema/json"


@pytest.mark.parametrize("msg", [
    worker.Hello("w1", "tok", capabilities=["gpu=1"], slots=4, held_leases=[7]),
    worker.Progress(3, 5, 10, "half"),
    worker.Heartbeat([1, 2]),
    worker.Result(9, msgspec.Raw(ENC.encode([1, "a", None])), "d"),
    worker.Fail(9, "boom", retryable=False),
])
def test_worker_messages_round_trip(msg: worker.WorkerMessage) -> None:
    back = WORKER_IN.decode(ENC.encode(msg))
    if isinstance(msg, worker.Result):
        assert isinstance(back, worker.Result)
        assert bytes(back.output) == bytes(msg.output)
    else:
        assert back == msg


def test_coordinator_messages_round_trip() -> None:
    items = msgspec.Raw(ENC.encode([{"x": 1}, 2]))
    msg = worker.Assign(1, "t", 0, "ref", items, 1000, 2)
    back = WORKER_OUT.decode(ENC.encode(msg))
    assert isinstance(back, worker.Assign)
    assert msgspec.msgpack.decode(bytes(back.items)) == [{"x": 1}, 2]
    assert WORKER_OUT.decode(ENC.encode(worker.Welcome("s", 2000, 4000))) == worker.Welcome(
        "s", 2000, 4000
    )


@pytest.mark.parametrize("payload, fragment", [
    ({"type": "nope"}, "Invalid value 'nope'"),
    ({"lease_id": 1}, "Object missing required field `type`"),
    ({"type": "progress", "lease_id": -1, "done": 0, "total": 1}, "Expected `int` >= 0"),
    ({"type": "progress", "lease_id": "x", "done": 0, "total": 1}, "Expected `int`, got `str`"),
    ({"type": "hello", "worker_id": "", "token": "t"}, "Expected `str` of length >= 1"),
    ({"type": "hello", "worker_id": "w", "token": "t", "slots": 0}, "Expected `int` >= 1"),
    ({"type": "fail", "lease_id": 1, "error": "x" * 9000}, "length <= 8000"),
])
def test_bad_worker_messages_are_refused_with_a_reason(payload: object, fragment: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=fragment.replace("`", ".").replace(
            "(", r"\(").replace(")", r"\)")):
        WORKER_IN.decode(ENC.encode(payload))


def test_garbage_bytes_are_a_decode_error() -> None:
    with pytest.raises(msgspec.DecodeError):
        WORKER_IN.decode(b"\xc1\xff\x00")


def test_live_subscribe_needs_topics() -> None:
    assert LIVE_IN.decode(b'{"type":"subscribe","topics":["task:t1"]}') == live.Subscribe(
        ["task:t1"]
    )
    with pytest.raises(msgspec.ValidationError):
        LIVE_IN.decode(b'{"type":"subscribe","topics":[]}')
