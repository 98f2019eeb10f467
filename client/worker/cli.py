"""``tn-worker``: run workers that take chunks from a coordinator.

  tn-worker connect --url ws://127.0.0.1:8000 --token T [--id worker-1] [--slots 2]
                    [--sandbox auto|strict]
  tn-worker swarm worker-1 worker-2 worker-3 [same options]

Options also come from the environment: TN_URL (or API_BASE), TN_TOKEN, WORKER_ID,
HEARTBEAT_INTERVAL (seconds).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import anyio

from client.worker.conn import FatalError, Worker, WorkerOptions


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    env_url = os.environ.get("TN_URL") or os.environ.get("API_BASE") or "ws://127.0.0.1:8000"
    common.add_argument(
        "--url", default=env_url, help="coordinator URL, ws:// or http:// (env TN_URL or API_BASE)"
    )
    common.add_argument(
        "--token",
        default=os.environ.get("TN_TOKEN"),
        help="a worker account's API token (env TN_TOKEN)",
    )
    common.add_argument("--slots", type=int, default=1, help="chunks run at once (default 1)")
    common.add_argument(
        "--prefetch",
        type=int,
        default=None,
        help="chunks queued beyond the running ones (default: --slots)",
    )
    common.add_argument(
        "--capability",
        "-c",
        action="append",
        default=[],
        metavar="NAME",
        help="declare a capability: name or name=value (repeatable)",
    )
    common.add_argument(
        "--heartbeat",
        type=float,
        default=_env_float("HEARTBEAT_INTERVAL"),
        help="heartbeat interval in seconds (default: the coordinator's)",
    )
    common.add_argument(
        "--cache-dir", type=Path, default=None, help="where downloaded task code is kept"
    )
    common.add_argument(
        "--sandbox",
        choices=("auto", "strict"),
        default="auto",
        help="auto (default): use every sandbox layer this machine offers and say which are "
        "missing; strict: refuse to start unless the namespaces, landlock and seccomp layers "
        "are all active",
    )
    common.add_argument(
        "--memory-mb",
        type=int,
        default=1024,
        help="address-space limit of each slot's child in MiB (default 1024)",
    )
    p = argparse.ArgumentParser(
        prog="tn-worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("connect", parents=[common], help="run one worker")
    c.add_argument(
        "--id",
        default=os.environ.get("WORKER_ID") or socket.gethostname(),
        help="this worker's name (env WORKER_ID; default the host name)",
    )
    s = sub.add_parser("swarm", parents=[common], help="run several workers as child processes")
    s.add_argument("ids", nargs="+", metavar="ID", help="worker ids, one process each")
    return p


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else None
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number of seconds") from None


def _ws_url(url: str) -> str:
    if url.startswith("http://"):
        return "ws://" + url[7:]
    if url.startswith("https://"):
        return "wss://" + url[8:]
    return url


def sandbox_summary(mode: str, layers: list[str], missing: list[str]) -> str:
    """``sandbox MODE: active layer names (missing: name: why; ...)`` for the startup line."""
    from client.worker.runner import layer_names

    active = ", ".join(layer_names(layers)) or "none"
    return f"sandbox {mode}: {active} (missing: {'; '.join(missing) or 'none'})"


def connect(args: argparse.Namespace) -> int:
    import asyncio

    from client.worker import runner
    from client.worker.runner import RunnerLimits

    opts = WorkerOptions(
        url=_ws_url(args.url),
        token=args.token,
        worker_id=args.id,
        slots=args.slots,
        prefetch=args.slots if args.prefetch is None else args.prefetch,
        capabilities=tuple(args.capability),
        cache_dir=args.cache_dir or Path.home() / ".cache" / "tn-worker",
        heartbeat_ms=int(args.heartbeat * 1000) if args.heartbeat else None,
        limits=RunnerLimits(memory_bytes=args.memory_mb << 20, sandbox=args.sandbox),
    )
    try:  # one child up front: which layers this machine offers, and strict's refusal
        layers, missing = asyncio.run(runner.probe_sandbox(opts.limits))
    except runner.ChildStartError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    worker = Worker(opts, on_event=lambda line: print(line, flush=True))

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        print("stopping", flush=True)
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stop_on_signal)
            await worker.run()
            tg.cancel_scope.cancel()

    print(
        f"tn-worker {opts.worker_id}: {opts.slots} slot(s), coordinator {opts.url}; "
        + sandbox_summary(args.sandbox, layers, missing),
        flush=True,
    )
    try:
        anyio.run(main, backend_options={"use_uvloop": True})
    except FatalError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


def swarm(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``connect`` once per id, each in its own process, output prefixed by id."""
    passthrough = [a for a in argv[1:] if a not in args.ids]
    procs = []
    for wid in args.ids:
        cmd = [sys.executable, "-m", "client.worker.cli", "connect", "--id", wid, *passthrough]
        procs.append(
            (
                wid,
                subprocess.Popen(
                    cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
                ),
            )
        )

    def pump(wid: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(f"[{wid}] {line}")
            sys.stdout.flush()

    threads = [threading.Thread(target=pump, args=p, daemon=True) for p in procs]
    for t in threads:
        t.start()

    def forward(signum: int, frame: object) -> None:
        for _, proc in procs:
            proc.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = [proc.wait() for _, proc in procs]
    for t in threads:
        t.join(timeout=1)
    return max(codes, default=0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if not args.token:
        print(
            "error: no token; pass --token or set TN_TOKEN (a worker account's token)",
            file=sys.stderr,
        )
        return 2
    if not 1 <= args.slots <= 256 or not 0 <= (args.prefetch or 0) <= 256:
        print("error: --slots must be from 1 to 256 and --prefetch from 0 to 256", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    if args.command == "swarm":
        return swarm(args, argv)
    return connect(args)


if __name__ == "__main__":
    sys.exit(main())
