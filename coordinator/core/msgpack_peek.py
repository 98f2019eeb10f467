"""Read the length of a MessagePack array from its header without decoding the items."""

from __future__ import annotations


def array_length(data: bytes) -> int | None:
    if not data:
        return None
    head = data[0]
    if 0x90 <= head <= 0x9F:
        return head & 0x0F
    if head == 0xDC and len(data) >= 3:
        return int.from_bytes(data[1:3], "big")
    if head == 0xDD and len(data) >= 5:
        return int.from_bytes(data[1:5], "big")
    return None
