"""Real child processes behind SlotRunner: ordering, failures, limits, recovery."""

from __future__ import annotations

import asyncio
import hashlib
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from client.sandbox import describe_layers
from client.worker.runner import ChildStartError, ChunkFailed, RunnerLimits, SlotRunner

DEADLINE_S = 10.0


class Code:
    """A customer code dir written under tmp_path, with a digest of its main.py."""

    def __init__(self, root: Path, name: str, main: str, **modules: str) -> None:
        self.dir = root / name
        self.dir.mkdir()
        source = textwrap.dedent(main)
        (self.dir / "main.py").write_text(source)
        for module, text in modules.items():
            (self.dir / f"{module}.py").write_text(textwrap.dedent(text))
        self.digest = hashlib.sha256(f"{name}\n{source}".encode()).hexdigest()


def enc(items: list[Any]) -> bytes:
    return msgspec.msgpack.encode(items)


async def run(
    runner: SlotRunner, code: Code, items: list[Any], deadline_s: float = DEADLINE_S, **kw: Any
) -> list[Any]:
    out = await runner.run(code.dir, code.digest, enc(items), deadline_s, **kw)
    result: list[Any] = msgspec.msgpack.decode(out)
    return result


async def fails(
    runner: SlotRunner, code: Code, items: list[Any], deadline_s: float = DEADLINE_S
) -> ChunkFailed:
    with pytest.raises(ChunkFailed) as info:
        await run(runner, code, items, deadline_s)
    return info.value


@pytest.fixture
async def runner() -> AsyncIterator[SlotRunner]:
    r = SlotRunner(RunnerLimits())
    await r.start()
    try:
        yield r
    finally:
        await r.close()


@pytest.fixture
def double(tmp_path: Path) -> Code:
    return Code(tmp_path, "double", "def process(item):\n    return item * 2\n")


async def test_process_keeps_order_over_many_warm_round_trips(
    runner: SlotRunner, double: Code
) -> None:
    assert await run(runner, double, [1, 2, 3, "a"]) == [2, 4, 6, "aa"]
    assert await run(runner, double, []) == []
    items = enc([1, 2, 3])
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        await runner.run(double.dir, double.digest, items, DEADLINE_S)
    per_run_us = (time.perf_counter() - start) / n * 1e6
    print(f"\nwarm round trip: {per_run_us:.0f} us per 3-item chunk ({n} runs)")


async def test_process_chunk_keeps_order(runner: SlotRunner, tmp_path: Path) -> None:
    code = Code(
        tmp_path,
        "chunky",
        """
        def process_chunk(items):
            return [{"n": i, "sq": x * x} for i, x in enumerate(items)]
        """,
    )
    out = await run(runner, code, [3, 1, 2])
    assert out == [{"n": 0, "sq": 9}, {"n": 1, "sq": 1}, {"n": 2, "sq": 4}]


async def test_exception_gives_traceback_and_runner_keeps_working(
    runner: SlotRunner, tmp_path: Path
) -> None:
    code = Code(
        tmp_path,
        "boom",
        """
        import sys
        def process(item):
            if item == 3:
                print("hint: item three is cursed", file=sys.stderr)
                raise ValueError(f"bad item {item}")
            return item
        """,
    )
    pid = runner.pid
    err = await fails(runner, code, [1, 2, 3, 4])
    assert err.retryable is True
    assert "ValueError: bad item 3" in err.reason
    assert "item 2" in err.reason  # the failing item's index
    assert "hint: item three is cursed" in err.reason  # the customer's stderr tail
    assert await run(runner, code, [1, 2]) == [1, 2]
    assert runner.pid == pid  # an exception does not cost a restart


async def test_deadline_kills_and_restarts_child(runner: SlotRunner, tmp_path: Path) -> None:
    code = Code(
        tmp_path,
        "spin",
        """
        def process(item):
            while item == "spin":
                pass
            return item
        """,
    )
    pid = runner.pid
    err = await fails(runner, code, [1, "spin"], deadline_s=0.5)
    assert "exceeded the 0.5 s chunk deadline" in err.reason
    assert runner.pid is not None and runner.pid != pid
    assert await run(runner, code, [1, 2]) == [1, 2]


@pytest.mark.parametrize(
    ("body", "expected"),
    [("os._exit(3)", "exit code 3"), ("os.kill(os.getpid(), 9)", "SIGKILL")],
)
async def test_child_death_is_named_and_child_restarted(
    runner: SlotRunner, tmp_path: Path, body: str, expected: str
) -> None:
    code = Code(
        tmp_path,
        "die",
        f"""
        import os
        def process(item):
            if item == "die":
                {body}
            return item
        """,
    )
    err = await fails(runner, code, ["die"])
    assert expected in err.reason
    assert err.retryable is True
    assert await run(runner, code, [7]) == [7]


async def test_memory_limit_fails_cleanly(tmp_path: Path) -> None:
    code = Code(
        tmp_path,
        "hog",
        """
        def process(item):
            if item == "hog":
                return len(bytearray(4 << 30))
            return item
        """,
    )
    runner = SlotRunner(RunnerLimits(memory_bytes=512 << 20))
    try:
        err = await fails(runner, code, ["hog"])
        assert "MemoryError" in err.reason
        assert await run(runner, code, [1]) == [1]
        assert any("address space 512 MiB" in layer for layer in runner.layers)
    finally:
        await runner.close()


async def test_printing_does_not_break_protocol(runner: SlotRunner, tmp_path: Path) -> None:
    code = Code(
        tmp_path,
        "chatty",
        """
        import os, sys
        def process(item):
            print("x" * 1000 * 1000)
            sys.stdout.write("\\x00\\x00\\x00\\x05hello")
            os.write(1, b"\\x00\\x00\\x10\\x00 raw fd 1 write")
            os.write(2, b"raw fd 2 write\\n")
            print("to stderr", file=sys.stderr)
            return item
        """,
    )
    assert await run(runner, code, list(range(5))) == list(range(5))
    assert await run(runner, code, [9]) == [9]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("{1, 2}", "set"),
        ("object()", "object"),
        ("[1, {'k': b'raw'}]", "bytes"),
        ("{1: 'int key'}", "key of type int"),
    ],
)
async def test_non_json_output_is_not_retryable(
    runner: SlotRunner, tmp_path: Path, expr: str, names: str
) -> None:
    code = Code(
        tmp_path,
        "badout",
        f"""
        def process(item):
            return item if item < 2 else {expr}
        """,
    )
    err = await fails(runner, code, [0, 1, 2])
    assert err.retryable is False
    assert names in err.reason
    assert "item 2" in err.reason


async def test_process_chunk_wrong_length_is_not_retryable(
    runner: SlotRunner, tmp_path: Path
) -> None:
    code = Code(tmp_path, "short", "def process_chunk(items):\n    return items[:-1]\n")
    err = await fails(runner, code, [1, 2, 3])
    assert err.retryable is False
    assert "returned 2 outputs for 3 items" in err.reason


async def test_output_over_limit_is_not_retryable(tmp_path: Path) -> None:
    code = Code(tmp_path, "big", "def process(item):\n    return 'x' * item\n")
    runner = SlotRunner(RunnerLimits(output_bytes_max=1000))
    try:
        assert await run(runner, code, [10]) == ["x" * 10]
        err = await fails(runner, code, [600, 600])
        assert err.retryable is False
        assert "output_bytes_max" in err.reason
    finally:
        await runner.close()


async def test_missing_entry_point_is_not_retryable(runner: SlotRunner, tmp_path: Path) -> None:
    code = Code(tmp_path, "empty", "X = 1\n")
    err = await fails(runner, code, [1])
    assert err.retryable is False
    assert "neither process(item) nor process_chunk(items)" in err.reason


async def test_progress_reports_increasing_counts(runner: SlotRunner, tmp_path: Path) -> None:
    code = Code(
        tmp_path,
        "slow",
        """
        import time
        def process(item):
            time.sleep(0.03)
            return item
        """,
    )
    calls: list[tuple[int, int]] = []
    out = await run(runner, code, list(range(12)), on_progress=lambda d, t: calls.append((d, t)))
    assert out == list(range(12))
    dones = [done for done, _ in calls]
    assert dones == sorted(set(dones)), calls  # strictly increasing
    assert all(total == 12 for _, total in calls)
    assert calls[-1] == (12, 12)
    assert len(calls) >= 3, calls  # intermediate reports, not just the final one


async def test_two_code_dirs_alternate(runner: SlotRunner, tmp_path: Path) -> None:
    # Both tasks have a sibling module called helper.py; each must see its own.
    a = Code(
        tmp_path,
        "a",
        "import helper\ndef process(item):\n    return helper.tag(item)\n",
        helper="def tag(x):\n    return f'a:{x}'\n",
    )
    b = Code(
        tmp_path,
        "b",
        "def process_chunk(items):\n    import helper\n    return [helper.tag(x) for x in items]\n",
        helper="def tag(x):\n    return f'b:{x}'\n",
    )
    for _ in range(3):
        assert await run(runner, a, [1, 2]) == ["a:1", "a:2"]
        assert await run(runner, b, [1, 2]) == ["b:1", "b:2"]


async def test_child_env_cwd_and_cleanup(
    runner: SlotRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TN_TOKEN", "secret-token")
    code = Code(
        tmp_path,
        "env",
        """
        import os, resource
        def process(item):
            return {
                "env": sorted(os.environ),
                "cwd": os.getcwd(),
                "home": os.environ.get("HOME"),
                "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            }
        """,
    )
    (info,) = await run(runner, code, [0])
    assert "TN_TOKEN" not in info["env"]
    assert set(info["env"]) <= {"PATH", "PYTHONPATH", "LANG", "HOME", "TMPDIR", "LC_CTYPE"}
    assert info["home"] == info["cwd"]
    assert info["nofile"] == 256
    assert Path(info["cwd"]).is_dir()
    await runner.close()
    assert runner.pid is None
    assert not Path(info["cwd"]).exists()


async def test_cancelled_run_kills_child_and_next_run_works(
    runner: SlotRunner, tmp_path: Path
) -> None:
    code = Code(
        tmp_path,
        "sleepy",
        "import time\ndef process(item):\n    time.sleep(item)\n    return item\n",
    )
    task = asyncio.ensure_future(run(runner, code, [30]))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runner.pid is None
    assert await run(runner, code, [0]) == [0]


async def test_start_failure_is_explained(tmp_path: Path) -> None:
    runner = SlotRunner(RunnerLimits(), python=str(tmp_path / "no-such-python"))
    with pytest.raises(ChildStartError, match="could not start the worker child"):
        await runner.start()
    await runner.close()


def test_describe_layers_in_parent_reports_rlimits() -> None:
    (line,) = describe_layers()
    assert line.startswith("rlimit:")


def test_same_behaviour_under_uvloop(tmp_path: Path) -> None:
    """The worker may run on uvloop, whose subprocess transport is a different class."""
    uvloop = pytest.importorskip("uvloop")
    code = Code(
        tmp_path,
        "uv",
        """
        import os, time
        def process(item):
            if item == "die":
                os._exit(5)
            time.sleep(item)
            return item
        """,
    )

    async def scenario() -> None:
        runner = SlotRunner(RunnerLimits())
        try:
            assert await run(runner, code, [0, 0]) == [0, 0]
            assert "exit code 5" in (await fails(runner, code, ["die"])).reason
            assert "deadline" in (await fails(runner, code, [5], deadline_s=0.3)).reason
            task = asyncio.ensure_future(run(runner, code, [30]))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await run(runner, code, [0]) == [0]
        finally:
            await runner.close()

    uvloop.run(scenario())
