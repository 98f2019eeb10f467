"""What the sandbox's layers cost per chunk: warm round trips of a 3-item chunk through a
slot with every layer, against one with resource limits only, interleaved so both see the
same machine load; the best of several rounds counts."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from client.sandbox import LAYER_NAMES
from client.worker.runner import RunnerLimits, SlotRunner, layer_names
from tests.worker.test_runner import Code, enc

RLIMIT_ONLY = frozenset(LAYER_NAMES) - {"rlimit"}


async def _measure(rounds: int = 6, n: int = 400) -> dict[str, float]:
    """Microseconds per warm round trip, by label: ``rlimit only`` and ``all layers``."""
    with tempfile.TemporaryDirectory() as tmp:
        code = Code(Path(tmp), "double", "def process(item):\n    return item * 2\n")
        items = enc([1, 2, 3])
        runners = {
            "rlimit only": SlotRunner(RunnerLimits(sandbox_skip=RLIMIT_ONLY)),
            "all layers": SlotRunner(RunnerLimits()),
        }
        best = dict.fromkeys(runners, float("inf"))
        try:
            for runner in runners.values():
                await runner.start()
                await runner.run(code.dir, code.digest, items, 10)
            assert layer_names(runners["rlimit only"].layers) == ["rlimit"]
            for _ in range(rounds):
                for label, runner in runners.items():
                    start = time.perf_counter()
                    for _ in range(n):
                        await runner.run(code.dir, code.digest, items, 10)
                    best[label] = min(best[label], (time.perf_counter() - start) / n * 1e6)
        finally:
            for runner in runners.values():
                await runner.close()
        return best


def measure() -> dict[str, float]:
    return asyncio.run(_measure())


if __name__ == "__main__":
    r = measure()
    print(f"warm round trip per 3-item chunk: rlimit only {r['rlimit only']:.0f} us, "
          f"all layers {r['all layers']:.0f} us")
