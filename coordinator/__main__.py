"""``tn-coordinator``: serve the REST API, worker and live WebSockets, on SQLite."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import uvicorn

from coordinator.app import create_app
from coordinator.config import Config, from_env


def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(prog="tn-coordinator", description=__doc__)
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="database, task files and recordings (default ./storage)")
    p.add_argument("--demo", action="store_true",
                   help="create demo accounts and write their tokens to <data-dir>/demo.json")
    args = p.parse_args(argv)
    config = from_env(Config())
    changes = {k: v for k, v in (("host", args.host), ("port", args.port),
                                  ("data_dir", args.data_dir)) if v is not None}
    if args.demo:
        changes["demo"] = True
    return dataclasses.replace(config, **changes)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_app(config)
    uvicorn.run(
        app, host=config.host, port=config.port, ws="websockets-sansio",
        loop="uvloop" if sys.platform != "win32" else "asyncio", http="httptools",
        ws_max_size=2 * config.ws_message_bytes_max, log_level="warning",
        timeout_graceful_shutdown=5, lifespan="on",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
