"""Seconds to create a task of 1,000,000 chunks (upload, parse, chunk, commit)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from tests.bench.common import Coordinator

NOOP = "def process(item):\n    return item\n"


def measure(chunks: int = 1_000_000) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        coord = Coordinator(Path(tmp) / "data")
        try:
            items = list(range(chunks))
            t0 = time.monotonic()
            task = coord.submit(NOOP, items, {"chunk_size": 1})
            took = time.monotonic() - t0
            assert task["chunks_total"] == chunks, task
            info = coord.task(task["id"])
            assert info["chunks_pending"] == chunks, info
            return took
        finally:
            coord.stop()


if __name__ == "__main__":
    print(f"1,000,000-chunk task created in {measure():.2f}s")
