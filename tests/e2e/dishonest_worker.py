"""A dishonest ``tn-worker``: the real worker (client/worker/conn.py, its session, its
sandboxed runner), except that every chunk's output is swapped for a wrong one of the right
length before it is sent, so only verification can tell.

    python tests/e2e/dishonest_worker.py connect --url ... --token ... --id liar [--slots N]

It takes the same arguments as ``tn-worker`` and prints ``lied: <n> outputs (<digest>)`` for
every chunk it corrupts, so a test can tell that it took part.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import msgspec

from client.worker import runner
from client.worker.cli import main

_honest_run = runner.SlotRunner.run


async def _lying_run(self: runner.SlotRunner, *args: Any, **kwargs: Any) -> bytes:
    out = await _honest_run(self, *args, **kwargs)
    n = len(msgspec.msgpack.decode(out))
    lie = msgspec.msgpack.encode([{"lie": i} for i in range(n)])  # right length, wrong values
    print(f"lied: {n} outputs ({hashlib.sha256(lie).hexdigest()[:12]})", flush=True)
    return lie


runner.SlotRunner.run = _lying_run  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
