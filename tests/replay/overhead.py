"""What recording costs: no-op chunks per second with recording off and on (the default).

    .venv/bin/python -m tests.replay.overhead [--runs 3] [--chunks 5000] [--workers 2] [--slots 2]

Runs ``tests/bench/throughput.measure`` (real coordinator, real workers) alternately with
``TN_JOURNAL_ENABLED=false TN_SESSION_LOGS_ENABLED=false`` and with both on, and prints each
run, the medians and the overhead in percent. Timing depends on the machine and what else
runs on it (see the load averages printed before and after), so no test asserts it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any

from tests.bench.throughput import measure

OFF = {"TN_JOURNAL_ENABLED": "false", "TN_SESSION_LOGS_ENABLED": "false"}


def _measure(recording: bool, workers: int, slots: int, chunks: int) -> dict[str, Any]:
    saved = {k: os.environ.get(k) for k in OFF}
    for k, v in OFF.items():
        if recording:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        return measure(workers, slots, chunks)
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--chunks", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--slots", type=int, default=2)
    args = p.parse_args(argv)
    print(f"load average before: {load()}")
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for n in range(args.runs):
        for recording in (False, True):
            r = _measure(recording, args.workers, args.slots, args.chunks)
            rates[recording].append(r["chunks_per_s"])
            cpu[recording].append(r["coordinator_cpu_us_per_chunk"])
            print(f"run {n + 1} recording {'on ' if recording else 'off'}: "
                  f"{r['chunks_per_s']:.0f} chunks/s, coordinator "
                  f"{r['coordinator_cpu_us_per_chunk']:.0f} us CPU/chunk", flush=True)
    print(f"load average after: {load()}")
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    cpu_off, cpu_on = statistics.median(cpu[False]), statistics.median(cpu[True])
    print(f"median: off {off:.0f} chunks/s, on {on:.0f} chunks/s: throughput with recording "
          f"{(on - off) / off * 100:+.1f} %; coordinator CPU per chunk {cpu_off:.0f} -> "
          f"{cpu_on:.0f} us ({(cpu_on - cpu_off) / cpu_off * 100:+.1f} %)")
    # each on-run beside the off-run just before it: less exposed to the machine drifting
    pairs = sorted((b - a) / a * 100 for a, b in zip(rates[False], rates[True], strict=True))
    quarter = len(pairs) // 4
    print(f"paired: median {statistics.median(pairs):+.1f} % over {len(pairs)} pairs "
          f"(middle half {pairs[quarter]:+.1f} to {pairs[-1 - quarter]:+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
