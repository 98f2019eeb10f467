"""Reading untrusted input: the errors a decoder raises on it, and whole numbers in text.

msgspec refuses malformed input with ``DecodeError`` (``ValidationError`` is one), but
invalid UTF-8 inside a string raises ``UnicodeDecodeError`` and nesting past its depth
limit (about 1000 levels, inside a ``Raw`` or an ignored field too) ``RecursionError``. Every
decoder of a frame or a body from outside catches all three as one refusal.
"""

from __future__ import annotations

import msgspec

DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def whole_number(raw: str | None, digits_max: int = 18) -> int | None:
    """``raw`` as an int if it is 1 to ``digits_max`` ASCII digits, else None. (``isdigit``
    alone passes '²', which ``int`` refuses, and 5,000 digits, past ``int``'s own limit.)"""
    if raw is None or not (raw.isascii() and raw.isdigit()) or len(raw) > digits_max:
        return None
    return int(raw)
