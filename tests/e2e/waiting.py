"""Waiting on conditions: poll with a short interval, fail with what was last seen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import pytest

T = TypeVar("T")


class Watched(Protocol):
    """A process whose exit ends a wait at once (see harness.Proc)."""

    name: str

    @property
    def alive(self) -> bool: ...

    @property
    def returncode(self) -> int | None: ...

    def log_tail(self) -> str: ...


def wait_until(
    observe: Callable[[], T], timeout_s: float, what: str, *,
    ready: Callable[[T], object] = bool, interval_s: float = 0.05,
    watch: tuple[Watched, ...] = (),
) -> T:
    """Poll ``observe()`` until ``ready(value)`` holds, and return that value.

    Fails with the last value observed after ``timeout_s``, or at once if a watched process
    exits (with its log).
    """
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = observe()
        if ready(last):
            return last
        for proc in watch:
            if not proc.alive:
                pytest.fail(f"{proc.name} exited (code {proc.returncode}) while waiting for "
                            f"{what}; last observed: {last!r}\n--- {proc.name} log ---\n"
                            f"{proc.log_tail()}")
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}; "
                        f"last observed: {last!r}")
        time.sleep(interval_s)
