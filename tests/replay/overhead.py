"""What recording costs: no-op chunks per second with recording off and on (the default).

    .venv/bin/python -m tests.replay.overhead [--pairs 60] [--chunks 4000] [--compare off,on]

Two systems run side by side for the whole measurement, each a real coordinator with its
own real workers (``--workers`` x ``--slots``): one with ``TN_JOURNAL_ENABLED=false
TN_SESSION_LOGS_ENABLED=false``, one with both on. Tasks of ``--chunks`` no-op chunks go to
one system, then the other, in the order A B B A A B ..., each after ``--pause-s`` of quiet
(so that what one system writes after its task, such as the session log writer's last
second, is done before the other's begins). Each pair of tasks gives one difference; the
mean of the differences and its standard error say how far the result can be trusted.

Why not one run with recording off, then one with it on: on a shared 2-core machine the
speed of the same code drifts by 10 % or more within a minute (a 20 ms loop sometimes takes
30 ms), so runs seconds apart with fresh processes differ by ~6 % each. Short tasks on
systems that stay up, alternated, see the same machine.

``--compare off,journal`` or ``off,logs`` measures one half of recording. Timing depends on
the machine and what else runs on it, so no test asserts it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.common import Coordinator, Proc, start_worker
from tests.bench.throughput import NOOP, machine_jiffies

MODES = {
    "off": {"TN_JOURNAL_ENABLED": "false", "TN_SESSION_LOGS_ENABLED": "false"},
    "on": {},
    "journal": {"TN_SESSION_LOGS_ENABLED": "false"},
    "logs": {"TN_JOURNAL_ENABLED": "false"},
}


class System:
    def __init__(self, mode: str, root: Path, workers: int, slots: int) -> None:
        self.mode = mode
        root.mkdir()
        self.coord = Coordinator(root / "data", MODES[mode])
        self.workers: list[Proc] = []
        self.runs: list[dict[str, float]] = []
        try:
            for i in range(workers):
                self.workers.append(start_worker(self.coord, f"w{i}", slots, root / f"cache{i}"))
        except BaseException:
            self.stop()  # not yet in the caller's list: stop what started
            raise

    def run(self, chunks: int) -> dict[str, float]:
        cpu0, busy0 = self.coord.cpu_s(), machine_jiffies()
        task = self.coord.submit(NOOP, list(range(chunks)), {"chunk_size": 1})
        info = self.coord.wait_task(task["id"])
        cpu1, busy1 = self.coord.cpu_s(), machine_jiffies()
        assert info["state"] == "completed", info
        r = {"chunks_per_s": chunks / ((info["finished_ms"] - info["created_ms"]) / 1000),
             "coordinator_cpu_us": (cpu1 - cpu0) / chunks * 1e6,
             "machine_cpu_us": (busy1 - busy0) / os.sysconf("SC_CLK_TCK") / chunks * 1e6}
        self.runs.append(r)
        return r

    def stop(self) -> None:
        for p in self.workers:
            p.stop()
        self.coord.stop()


def compare(a: list[float], b: list[float]) -> str:
    diffs = [(y - x) / x * 100 for x, y in zip(a, b, strict=True)]
    err = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return (f"median {statistics.median(a):.0f} -> {statistics.median(b):.0f}; paired mean "
            f"{statistics.mean(diffs):+.1f} % +- {err:.1f} (standard error), median "
            f"{statistics.median(diffs):+.1f} %")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=60)
    p.add_argument("--chunks", type=int, default=4000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--pause-s", type=float, default=0.6)
    p.add_argument("--compare", default="off,on", help=f"two of {', '.join(MODES)}")
    args = p.parse_args(argv)
    modes = args.compare.split(",")
    if len(modes) != 2 or not set(modes) <= set(MODES):
        p.error(f"--compare takes two of {', '.join(MODES)}, comma-separated")
    with tempfile.TemporaryDirectory() as tmp:
        systems: list[System] = []
        try:
            for n, mode in enumerate(modes):
                systems.append(System(mode, Path(tmp) / f"{n}-{mode}", args.workers, args.slots))
            for s in systems:  # warm-up: workers connect, fetch the code, start children
                s.run(args.workers * args.slots * 50)
                s.runs.clear()
            a, b = systems
            started = time.monotonic()
            for k in range(args.pairs):
                for s in (a, b) if k % 2 == 0 else (b, a):
                    time.sleep(args.pause_s)
                    s.run(args.chunks)
                if (k + 1) % 10 == 0 or k + 1 == args.pairs:
                    rates = ([r["chunks_per_s"] for r in s.runs] for s in (a, b))
                    print(f"{k + 1} pairs, {time.monotonic() - started:.0f} s: {b.mode} vs "
                          f"{a.mode}: chunks/s {compare(*rates)}", flush=True)
            for key, what in (("chunks_per_s", "throughput (chunks/s)"),
                              ("coordinator_cpu_us", "coordinator CPU per chunk (us)"),
                              ("machine_cpu_us", "machine CPU per chunk (us)")):
                print(f"{what}, {a.mode} -> {b.mode}: "
                      f"{compare(*([r[key] for r in s.runs] for s in (a, b)))}")
        finally:
            for s in systems:
                s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
