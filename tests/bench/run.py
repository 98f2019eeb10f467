"""``make bench``: every benchmark, printed as a table against the targets of the design.

Run on an otherwise idle machine; coordinator and workers share its cores.
"""

from __future__ import annotations

import signal

from tests.bench import creation, failover, idle, sandbox, throughput


def main() -> None:
    rows = _Rows()
    for workers in (2, 4):
        r = throughput.measure(workers, 2, 20_000)
        rows.append((f"no-op chunks/s, {workers} workers x 2 slots",
                     f"{r['chunks_per_s']:.0f}", ">= 5000 with 4 workers"))
        rows.append((f"coordinator CPU per chunk, {workers} workers",
                     f"{r['coordinator_cpu_us_per_chunk']:.0f} us", "< 150 us"))
    kill = failover.measure(sig=signal.SIGKILL)
    stop = failover.measure(sig=signal.SIGSTOP)
    rows.append(("SIGKILL -> chunk reassigned", f"{max(kill):.2f} s (worst of 3)",
                 "< 2 heartbeats (4 s)"))
    rows.append(("silent (SIGSTOP) -> chunk reassigned", f"{max(stop):.2f} s (worst of 3)",
                 "< 2 heartbeats (4 s)"))
    rows.append(("1,000,000-chunk task created", f"{creation.measure():.2f} s", "< 10 s"))
    _, rss, _ = idle.measure()
    rows.append(("10,000 idle worker sessions, RSS", f"{rss / 2**20:.0f} MiB", "< 2048 MiB"))
    slot = sandbox.measure()
    rows.append(("sandbox layers, per 3-item chunk",
                 f"+{slot['all layers'] - slot['rlimit only']:.0f} us "
                 f"({slot['rlimit only']:.0f} -> {slot['all layers']:.0f})", "< 50 us"))


class _Rows(list[tuple[str, str, str]]):
    """Prints each row as it is measured (a later failure keeps the earlier numbers)."""

    def append(self, row: tuple[str, str, str]) -> None:
        super().append(row)
        name, value, target = row
        print(f"{name:<42}  {value:>22}   target {target}", flush=True)


if __name__ == "__main__":
    main()
