"""``tn``: the customer command line, built on ``client.sdk`` (money: ``client.tn_wallet``;
API tokens and the audit log: ``client.tn_tokens``).

Exit codes: 0 success; 1 the coordinator refused (its error is printed), or a watched task
ended failed/cancelled; 2 usage error; 3 the coordinator could not be reached; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect

from client import render, tn_tokens, tn_wallet
from client.sdk import (
    TERMINAL_STATES,
    ApiError,
    Client,
    ConnectError,
    TransferError,
    WatchError,
    watch_task,
)
from schema.rest import TaskSpec

DEFAULT_URL = "http://127.0.0.1:8000"
UPLOAD_PROGRESS_BYTES_MIN = 4 << 20  # show upload progress only for bodies at least this big
CODE_SUFFIXES = (".py", ".zip")
SPEC_OPTIONS = {
    "chunk_size": "--chunk-size",
    "max_concurrency": "--max-concurrency",
    "max_attempts": "--max-attempts",
    "requirements": "--require",
    "chunk_timeout_ms": "--timeout",
    "name": "--name",
    "budget": "--budget",
    "price_per_chunk": "--price",
    "max_spend_per_minute": "--max-spend-per-minute",
}

Command = Callable[[Client, argparse.Namespace], int]


class UsageError(Exception):
    """A bad command line found after parsing (missing file, out-of-range option): exit 2."""


# ---- argument parsing --------------------------------------------------------------------


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"coordinator base URL (env TN_URL or API_BASE; default {DEFAULT_URL})",
    )
    common.add_argument("--token", default=argparse.SUPPRESS, help="API token (env TN_TOKEN)")
    parser = argparse.ArgumentParser(
        prog="tn", description="Task Network customer CLI", parents=[common]
    )
    top = parser.add_subparsers(dest="group",
                                metavar="{task,wallet,token,admin,audit,health,replay}")
    health = top.add_parser("health", parents=[common], help="check that the coordinator is up")
    health.set_defaults(func=cmd_health)
    task = top.add_parser("task", parents=[common], help="submit, follow and fetch tasks")
    sub = task.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, func: Command, help_text: str, json_flag: bool = True) -> Any:
        return render.add_command(sub, common, name, func, help_text, json_flag)

    p = command("submit", cmd_submit, "upload code and data as a new task; print its id")
    p.add_argument("--code", type=Path, required=True, help="a .py file, or a .zip with main.py")
    p.add_argument("--data", type=Path, required=True, help="a .json array, .jsonl or .csv file")
    p.add_argument("--chunk-size", type=positive_int, help="items per chunk")
    p.add_argument("--max-concurrency", type=positive_int, help="chunks leased at once, at most")
    p.add_argument("--max-attempts", type=positive_int, help="tries per chunk before it fails")
    p.add_argument("--require", action="append", metavar="CAP", help="worker capability needed")
    p.add_argument("--timeout", type=positive_seconds, metavar="SECONDS", help="per-chunk limit")
    p.add_argument("--name", help="a name to show in listings")
    tn_wallet.add_task_options(p, command)
    command("list", cmd_list, "list your tasks")
    command("status", cmd_status, "show one task").add_argument("id")
    command("watch", cmd_watch, "follow a task live until it ends", False).add_argument("id")
    command("cancel", cmd_cancel, "cancel a task").add_argument("id")
    p = command("results", cmd_results, "download a finished task's results", False)
    p.add_argument("id")
    p.add_argument("-o", "--output", default="-", help="output file, or - for stdout (default)")
    p.add_argument("--format", choices=["json", "jsonl"], help="default: from -o's suffix, json")
    p = command("chunks", cmd_chunks, "list a task's chunks, a page at a time")
    p.add_argument("id")
    p.add_argument("--offset", type=non_negative_int, default=0)
    p.add_argument("--limit", type=positive_int, default=100)
    tn_wallet.add_groups(top, common)
    tn_tokens.add_groups(top, common)
    return parser


def resolve_url(args: argparse.Namespace, env: dict[str, str]) -> str:
    given = getattr(args, "url", None)
    return str(given or env.get("TN_URL") or env.get("API_BASE") or DEFAULT_URL)


def resolve_token(args: argparse.Namespace, env: dict[str, str]) -> str:
    return str(getattr(args, "token", None) or env.get("TN_TOKEN") or "")


# ---- errors ------------------------------------------------------------------------------


def format_api_error(err: ApiError) -> str:
    text = f"error: {err.message}"
    if err.field:
        text += f" (field: {err.field})"
    if err.status == 401:
        text += "\nhint: check --token or TN_TOKEN"
    return text


def format_connect_error(err: ConnectError) -> str:
    if isinstance(err, TransferError):
        return f"error: {err}"
    return f"error: {err}\nhint: is the coordinator running there? check --url or TN_URL"


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``spec`` part from the submit options given (others take the coordinator's defaults),
    checked against ``schema.rest.TaskSpec`` so a bad value is a usage error, not a round trip.
    """
    spec: dict[str, Any] = {}
    for key in ("chunk_size", "max_concurrency", "max_attempts", "name"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    if args.require:
        spec["requirements"] = list(args.require)
    if args.timeout is not None:
        spec["chunk_timeout_ms"] = round(args.timeout * 1000)
    spec.update(tn_wallet.money_spec(args))
    try:
        msgspec.convert(spec, TaskSpec)
    except msgspec.ValidationError as e:
        match = re.search(r" - at `\$\.(\w+)", str(e))
        key = match.group(1) if match else ""
        why = str(e).split(" - at ")[0]
        if key == "chunk_timeout_ms":
            low, high = _timeout_bounds_s()
            why = f"must be between {low:g} and {high:g} seconds"
        raise UsageError(f"invalid {SPEC_OPTIONS.get(key, 'spec')}: {why}") from None
    return spec


def _timeout_bounds_s() -> tuple[float, float]:
    """TaskSpec's limits on ``chunk_timeout_ms``, in seconds (for --timeout's message)."""
    info = msgspec.inspect.type_info(TaskSpec)
    for field in info.fields if isinstance(info, msgspec.inspect.StructType) else ():
        kind = field.type
        if field.name == "chunk_timeout_ms" and isinstance(kind, msgspec.inspect.IntType):
            return (kind.ge or 0) / 1000, (kind.le or 0) / 1000
    return 0.0, float("inf")


def check_input_files(code: Path, data: Path) -> None:
    for option, path in (("--code", code), ("--data", data)):
        if not path.is_file():
            raise UsageError(f"{option}: no such file: {path}")
    if code.suffix.lower() not in CODE_SUFFIXES:
        raise UsageError(f"--code must be a .py file or a .zip with main.py at its root: {code}")


# ---- commands ----------------------------------------------------------------------------


def cmd_health(client: Client, args: argparse.Namespace) -> int:
    doc = client.health()
    print(f"ok: {doc.get('ok')} · version {doc.get('version', '?')} · {client.url}")
    return 0 if doc.get("ok") is True else 1


def cmd_submit(client: Client, args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    check_input_files(args.code, args.data)
    status = render.StatusLine(sys.stderr, tty=True)
    show = sys.stderr.isatty()

    def progress(sent: int, total: int | None) -> None:
        if show and total is not None and total >= UPLOAD_PROGRESS_BYTES_MIN:
            line = render.transfer_line("uploading", sent, total)
            status.show(line, time.monotonic(), force=sent == total)

    try:
        created = client.submit_task(args.code, args.data, spec, progress=progress)
    finally:
        status.finish()
    if args.json:
        render.print_json(created)
    else:
        print(created["id"])
    return 0


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    tasks = client.list_tasks()
    if args.json:
        render.print_json({"tasks": tasks})
    else:
        print(render.task_table(tasks) if tasks else "no tasks")
    return 0


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    task = client.task(args.id)
    if args.json:
        render.print_json(task)
    else:
        print(render.task_summary(task))
    return 0


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    task = client.cancel(args.id)
    if args.json:
        render.print_json(task)
    else:
        print(f"task {task.get('id', args.id)}: {task.get('state')}")
    return 0


def cmd_chunks(client: Client, args: argparse.Namespace) -> int:
    page = client.chunks(args.id, args.offset, args.limit)
    if args.json:
        render.print_json(page)
        return 0
    chunks = page.get("chunks") or []
    print(render.chunk_table(chunks) if chunks else "no chunks in this range")
    if page.get("next_offset") is not None:
        print(f"more: --offset {page['next_offset']}", file=sys.stderr)
    return 0


def task_outcome(task: dict[str, Any]) -> int:
    """Report how a finished task ended on stderr: 0 if it completed, 1 otherwise."""
    state = task.get("state")
    print(f"task {task.get('id')} {state}", file=sys.stderr)
    return 0 if state == "completed" else 1


def cmd_watch(client: Client, args: argparse.Namespace) -> int:
    task = client.task(args.id)  # a clean 404/401 and an early exit for a finished task
    tty = sys.stderr.isatty()
    status = render.StatusLine(sys.stderr, tty=tty)
    meter = render.RateMeter()
    if task.get("state") in TERMINAL_STATES:
        status.show(render.task_progress_line(task, None), time.monotonic(), force=True)
        status.finish()
        return task_outcome(task)

    def on_update(update: dict[str, Any]) -> bool:
        now = time.monotonic()
        rate = meter.update(now, int(update.get("chunks_done", 0)))
        finished = update.get("state") in TERMINAL_STATES
        status.show(render.task_progress_line(update, rate), now, force=finished)
        return finished

    try:
        final = asyncio.run(watch_task(client.url, client.token, args.id, on_update))
    finally:
        status.finish(time.monotonic())
    return task_outcome(final)


def results_format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    return "jsonl" if Path(args.output).suffix.lower() in (".jsonl", ".ndjson") else "json"


def cmd_results(client: Client, args: argparse.Namespace) -> int:
    fmt = results_format(args)
    show = sys.stderr.isatty()
    status = render.StatusLine(sys.stderr, tty=True)

    def progress(done: int, total: int | None) -> None:
        if show:
            status.show(render.transfer_line("downloading", done, total), time.monotonic())

    if args.output == "-":
        try:
            client.results_to(args.id, sys.stdout.buffer, fmt, progress=progress)
            sys.stdout.buffer.flush()
        finally:
            status.finish(time.monotonic())
        return 0
    target = Path(args.output)
    partial = target.with_name(target.name + ".part")  # never leave a truncated file behind
    try:
        with partial.open("wb") as f:
            written = client.results_to(args.id, f, fmt, progress=progress)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        status.finish(time.monotonic())
    print(f"wrote {render.format_bytes(written)} to {target}", file=sys.stderr)
    return 0


# ---- entry point -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["replay"]:  # a developer's tool, on recordings; no coordinator needed
        from coordinator.replay import main as replay_main

        return replay_main(args_in[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    if getattr(args, "func", None) is None:
        parser.print_usage(sys.stderr)
        print("tn: error: choose a command, e.g. `tn task list`", file=sys.stderr)
        return 2
    env = dict(os.environ)
    try:
        client = Client(resolve_url(args, env), resolve_token(args, env))
    except ValueError as e:  # a malformed --url / TN_URL
        print(f"error: {e}", file=sys.stderr)
        return 2
    func: Command = args.func
    try:
        return func(client, args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ApiError as e:
        print(format_api_error(e), file=sys.stderr)
        return 1
    except ConnectError as e:
        print(format_connect_error(e), file=sys.stderr)
        return 3
    except WatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # stdout closed early (`tn task results ID | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:  # local files: unreadable input, unwritable output
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
