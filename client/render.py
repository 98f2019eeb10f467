"""Text rendering for the ``tn`` command: progress bars, rates, tables and task summaries.

Everything here is pure (time comes in as an argument) so it is tested without a terminal,
except ``StatusLine``, which writes to the stream it is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    """``11s``, ``3m05s``, ``2h07m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_bytes(n: int) -> str:
    """``512 B``, ``1.5 KiB``, ``200.0 MiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def format_credits(units: int) -> str:
    """Integer credits in the smallest unit as credits with two decimals: 1234 -> ``12.34``,
    -5 -> ``-0.05``. Exact: integer arithmetic only."""
    sign = "-" if units < 0 else ""
    whole, cents = divmod(abs(units), 100)
    return f"{sign}{whole}.{cents:02d}"


def task_state_label(task: dict[str, Any]) -> str:
    """The task's state, or ``needs funds`` for a running task its escrow cannot pay."""
    state = str(task.get("state"))
    return "needs funds" if state == "running" and task.get("needs_funds") else state


def format_time_ms(ms: int | None) -> str:
    """A Unix time in milliseconds as UTC, ``2025-01-31 12:00:05Z``; ``-`` for None."""
    if ms is None:
        return "-"
    when = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%SZ")


def bar(done: int, total: int, width: int = 10) -> str:
    """``[#####-----]``: ``done/total`` of ``width`` cells, rounded down (full only when done)."""
    filled = width if total <= 0 else min(width, max(0, done) * width // total)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def percent(done: int, total: int) -> int:
    """Whole percent, rounded down so that 100% means finished; an empty total is 100%."""
    return 100 if total <= 0 else min(100, max(0, done) * 100 // total)


class RateMeter:
    """Chunks (or bytes) per second over a sliding window of ``(time, count)`` samples."""

    def __init__(self, window_s: float = 10.0, min_span_s: float = 0.5) -> None:
        self.window_s = window_s
        self.min_span_s = min_span_s
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, now: float, count: int) -> float | None:
        """Record ``count`` at ``now``; return the rate, or None until there is enough history."""
        self._samples.append((now, count))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        t0, c0 = self._samples[0]
        span = now - t0
        if span < self.min_span_s:
            return None
        return max(0, count - c0) / span


def task_progress_line(task: dict[str, Any], rate: float | None, width: int = 10) -> str:
    """``[#####-----] 53% 530/1000 chunks · 12 leased · 0 failed · 41.2 chunks/s · ETA 11s``."""
    total = int(task.get("chunks_total", 0))
    done = int(task.get("chunks_done", 0))
    failed = int(task.get("chunks_failed", 0))
    leased = int(task.get("chunks_leased", 0))
    parts = [
        f"{bar(done, total, width)} {percent(done, total)}% {done}/{total} chunks",
        f"{leased} leased",
        f"{failed} failed",
    ]
    remaining = max(0, total - done - failed)
    if task.get("needs_funds"):
        parts.append(f"needs funds: {format_credits(int(task.get('funds_needed', 0)))} more")
    if task.get("state", "running") != "running":
        parts.append(str(task.get("state")))
    elif rate is None:
        parts.append("-- chunks/s · ETA --")
    elif remaining == 0:
        parts.append(f"{rate:.1f} chunks/s · ETA 0s")
    elif rate <= 0:
        parts.append("0.0 chunks/s · ETA --")
    else:
        parts.append(f"{rate:.1f} chunks/s · ETA {format_duration(remaining / rate)}")
    return " · ".join(parts)


def transfer_line(verb: str, done: int, total: int | None, width: int = 20) -> str:
    """``uploading [####----] 40% 200.0 MiB/500.0 MiB`` (or ``downloading 12.0 MiB``)."""
    if total is None:
        return f"{verb} {format_bytes(done)}"
    return (
        f"{verb} {bar(done, total, width)} {percent(done, total)}% "
        f"{format_bytes(done)}/{format_bytes(total)}"
    )


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\x1b``): what a server or another user
    wrote must not drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; numbers are right-aligned."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else printable(str(c)) for c in r]
                                           for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [bool(rows) and all(isinstance(r[i], int) for r in rows) for i in range(len(headers))]
    lines = []
    for row in cells:
        cols = zip(row, widths, numeric, strict=True)
        padded = [c.rjust(w) if num else c.ljust(w) for c, w, num in cols]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def task_table(tasks: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            t.get("id"),
            t.get("name") or "-",
            task_state_label(t),
            f"{t.get('chunks_done', 0)}/{t.get('chunks_total', 0)}",
            t.get("items_done", 0),
        ]
        for t in tasks
    ]
    return table(["ID", "NAME", "STATE", "CHUNKS", "ITEMS DONE"], rows)


def chunk_table(chunks: Sequence[dict[str, Any]]) -> str:
    rows = [
        [c.get("index"), c.get("state"), c.get("attempts"), c.get("worker"), c.get("error")]
        for c in chunks
    ]
    return table(["INDEX", "STATE", "ATTEMPTS", "WORKER", "ERROR"], rows)


def task_summary(task: dict[str, Any]) -> str:
    """A human summary of one TaskInfo, one ``label  value`` per line."""
    name = f" ({task['name']})" if task.get("name") else ""
    lines = [
        ("task", f"{task.get('id')}{name}"),
        ("owner", task.get("owner", "-")),
        ("state", task_state_label(task)),
        (
            "chunks",
            f"{task.get('chunks_done', 0)}/{task.get('chunks_total', 0)} done · "
            f"{task.get('chunks_leased', 0)} leased · {task.get('chunks_pending', 0)} pending · "
            f"{task.get('chunks_failed', 0)} failed",
        ),
        ("items", f"{task.get('items_done', 0)}/{task.get('items_total', 0)} done"),
        (
            "limits",
            f"chunk size {task.get('chunk_size')} · max concurrency "
            f"{task.get('max_concurrency')} · max attempts {task.get('max_attempts')}",
        ),
        ("requires", ", ".join(task.get("requirements") or []) or "-"),
        ("created", format_time_ms(task.get("created_ms"))),
        ("finished", format_time_ms(task.get("finished_ms"))),
        *task_money_lines(task),
    ]
    return "\n".join(f"{label:<9}{value}" for label, value in lines)


def task_money_lines(task: dict[str, Any]) -> list[tuple[str, str]]:
    """Price, spending and what finishing costs, for a paid task (none for a free one)."""
    price, budget = int(task.get("price_per_chunk", 0)), int(task.get("budget", 0))
    if not price and not budget:
        return []
    c = format_credits
    cap = int(task.get("max_spend_per_minute", 0))
    eta = task.get("eta_ms")
    lines = [
        ("price", f"{c(price)} per chunk · budget {c(budget)}"
                  + (f" · at most {c(cap)}/min" if cap else "")),
        ("money", f"spent {c(int(task.get('spent', 0)))} · reserved "
                  f"{c(int(task.get('reserved', 0)))} · remaining "
                  f"{c(int(task.get('remaining', 0)))}"),
        ("pace", f"{c(int(task.get('burn_per_minute', 0)))}/min · "
                 f"{task.get('chunks_per_minute', 0)} chunks/min · ETA "
                 f"{format_duration(int(eta) / 1000) if eta is not None else '--'} · "
                 f"{c(int(task.get('cost_to_finish', 0)))} to finish"),
    ]
    if task.get("needs_funds"):
        need = c(int(task.get("funds_needed", 0)))
        lines.append(("funds", f"NEEDS FUNDS: {need} more; top up with "
                               f"`tn task fund {task.get('id')} {need}`"))
    return lines


class StatusLine:
    """A status line on ``stream``: redrawn in place on a TTY, else one line per ``interval_s``.

    ``show(text, now)`` draws at most every ``tty_interval_s`` (TTY) or ``interval_s`` (not a
    TTY) unless ``force`` is set; ``finish()`` ends the line on a TTY.
    """

    def __init__(
        self,
        stream: TextIO,
        tty: bool,
        interval_s: float = 1.0,
        tty_interval_s: float = 0.1,
    ) -> None:
        self.stream = stream
        self.tty = tty
        self.interval_s = tty_interval_s if tty else interval_s
        self._last_s: float | None = None
        self._drawn = False
        self._pending: str | None = None

    def show(self, text: str, now: float, force: bool = False) -> None:
        if not force and self._last_s is not None and now - self._last_s < self.interval_s:
            self._pending = text
            return
        self._last_s, self._pending = now, None
        if self.tty:
            columns = shutil.get_terminal_size((100, 24)).columns
            self.stream.write("\r" + text[: max(10, columns - 1)] + "\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._drawn = True

    def finish(self, now: float | None = None) -> None:
        """Draw the last suppressed text (if any) and end the line."""
        if self._pending is not None:
            self.show(self._pending, now if now is not None else 0.0, force=True)
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False


def print_json(doc: Any) -> None:
    """``--json`` output: the document as the API answered it, indented."""
    print(json.dumps(doc, indent=2))


def add_command(parent: Any, common: argparse.ArgumentParser, name: str, func: Callable[..., int],
                help_text: str, json_flag: bool = True) -> argparse.ArgumentParser:
    """A ``tn`` subcommand of ``parent`` (a subparsers object) running ``func``, with the
    common options and, unless ``json_flag`` is false, ``--json``."""
    p: argparse.ArgumentParser = parent.add_parser(name, parents=[common], help=help_text,
                                                   description=help_text)
    p.set_defaults(func=func)
    if json_flag:
        p.add_argument("--json", action="store_true", help="print the JSON response")
    return p


def arg_type(parse: Callable[[str], int]) -> Callable[[str], int]:
    """An argparse ``type`` from a parser that raises ValueError saying why: argparse then
    prints that reason with the option's name."""
    def convert(text: str) -> int:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = parse.__name__
    return convert
