"""The line the session log writer makes of one frame a session received."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from coordinator.sessionlog_writer import Writer
from coordinator.sessionlogs import CLOSE, IN, OPEN, open_meta, record


def logged(frame: bytes, proto: str) -> dict[str, Any]:
    """``frame``, received by a session whose frames are ``proto`` (msgpack, json), as the
    writer logs it: one JSON line, parsed."""
    with tempfile.TemporaryDirectory() as tmp:
        writer = Writer(Path(tmp), 64, 1 << 20)
        data = bytearray(record(OPEN, 1, 0, open_meta("s.jsonl", proto)) +
                         record(IN, 1, 1, frame) + record(CLOSE, 1, 2))
        assert writer.feed(data) == len(data)
        [line, end] = (Path(tmp) / "s.jsonl").read_text(encoding="utf-8").split("\n")
        assert end == ""  # one line (JSON may hold U+0085 and U+2028 raw: not line ends)
    parsed: dict[str, Any] = json.loads(line)
    return parsed
