"""``tn wallet ...``, ``tn task fund``, ``tn admin withdrawals ...`` and the money options of
``tn task submit``.

Credits are shown and typed with two decimals (1 credit = 100 units, the API's integers):
``12.34`` is 1234 units. Parsing is exact string arithmetic, never float: ``12.345`` (a
fraction of the smallest unit), negatives, zero, non-numbers and amounts over the maximum
are refused with a message saying why.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import Any

from client import render
from client.render import format_credits
from client.sdk import Client
from schema.rest import MONEY_MAX

Command = Callable[[Client, argparse.Namespace], int]
AddCommand = Callable[..., Any]  # tn.build_parser's ``command(name, func, help, json_flag)``

_AMOUNT = re.compile(r"(\d+)(?:\.(\d{1,2}))?")
_TOO_PRECISE = re.compile(r"\d+\.\d{3,}")


def parse_credits(text: str, max_units: int = MONEY_MAX) -> int:
    """``"12.34"`` -> 1234, ``"12"`` -> 1200; ValueError (with the reason) otherwise."""
    raw = text.strip()
    number = raw[1:] if raw[:1] in "+-" and raw[1:] else raw
    if _TOO_PRECISE.fullmatch(number):
        raise ValueError(f"{text!r} has more than two decimals; the smallest amount is 0.01")
    match = _AMOUNT.fullmatch(number)
    if match is None:
        raise ValueError(f"not an amount of credits: {text!r} (write e.g. 12 or 12.34)")
    whole, cents = match.group(1), (match.group(2) or "").ljust(2, "0")
    if raw.startswith("-") and (whole.strip("0") or cents.strip("0")):
        raise ValueError(f"must be more than 0, got {text!r}")
    if len(whole.lstrip("0")) > len(str(max_units)):
        raise ValueError(f"{text!r} is over the largest amount, {format_credits(max_units)}")
    units = int(whole) * 100 + int(cents)
    if units == 0:
        raise ValueError(f"must be more than 0, got {text!r}")
    if units > max_units:
        raise ValueError(f"{text!r} is over the largest amount, {format_credits(max_units)}")
    return units


credits_arg = render.arg_type(parse_credits)  # an argparse ``type``: credits -> units


# ---- parsers -----------------------------------------------------------------------------


def add_task_options(submit: argparse.ArgumentParser, command: AddCommand) -> None:
    """``tn task submit --budget --price --max-spend-per-minute`` and ``tn task fund``."""
    submit.add_argument("--budget", type=credits_arg, metavar="CREDITS",
                        help="moved from your wallet into the task's escrow, e.g. 12.50")
    submit.add_argument("--price", type=credits_arg, metavar="CREDITS",
                        help="paid per accepted chunk, e.g. 0.05")
    submit.add_argument("--max-spend-per-minute", type=credits_arg, metavar="CREDITS",
                        help="spend at most this much per minute")
    p = command("fund", cmd_task_fund, "move credits from your wallet into a task's escrow")
    p.add_argument("id")
    p.add_argument("amount", type=credits_arg, metavar="AMOUNT", help="credits, e.g. 12.50")


def money_spec(args: argparse.Namespace) -> dict[str, int]:
    """The money part of a task's spec from ``tn task submit``'s options."""
    names = {"budget": "budget", "price": "price_per_chunk",
             "max_spend_per_minute": "max_spend_per_minute"}
    return {key: getattr(args, opt) for opt, key in names.items()
            if getattr(args, opt, None) is not None}


def add_groups(top: Any, common: argparse.ArgumentParser) -> None:
    """The ``wallet`` and ``admin`` command groups."""
    group = top.add_parser("wallet", parents=[common], help="your credits: balance, deposits,"
                                                           " withdrawals, history, earnings")
    sub = group.add_subparsers(dest="command", metavar="COMMAND")

    def command(parent: Any, name: str, func: Command, help_text: str) -> Any:
        return render.add_command(parent, common, name, func, help_text)

    command(sub, "balance", cmd_balance, "show your balance, held withdrawals and escrow")
    for name, func, verb in (("deposit", cmd_deposit, "add"), ("withdraw", cmd_withdraw,
                                                               "take out")):
        p = command(sub, name, func, f"{verb} credits")
        p.add_argument("amount", type=credits_arg, metavar="AMOUNT", help="credits, e.g. 12.50")
        p.add_argument("--key", metavar="KEY", help="idempotency key: a retry with the same "
                                                    "key is done once")
    p = sub.choices["deposit"]
    how = p.add_mutually_exclusive_group()
    how.add_argument("--direct", dest="method", action="store_const", const="direct",
                     help="deposit directly (sandbox mode)")
    how.add_argument("--checkout", dest="method", action="store_const", const="checkout",
                     help="pay through Stripe Checkout")
    p = command(sub, "transactions", cmd_transactions, "list your wallet's entries, newest first")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--limit", type=int, default=50)
    command(sub, "earnings", cmd_earnings, "credits earned for accepted chunks, per task")

    admin = top.add_parser("admin", parents=[common], help="admin: withdrawals")
    admin_sub = admin.add_subparsers(dest="command", metavar="COMMAND")
    wd = admin_sub.add_parser("withdrawals", parents=[common], help="pending withdrawals")
    wd_sub = wd.add_subparsers(dest="action", metavar="ACTION")
    command(wd_sub, "list", cmd_withdrawals, "list pending withdrawals")
    for name, func in (("approve", cmd_approve), ("reject", cmd_reject)):
        p = command(wd_sub, name, func, f"{name} a pending withdrawal")
        p.add_argument("id", type=int)


# ---- commands ----------------------------------------------------------------------------


def cmd_balance(client: Client, args: argparse.Namespace) -> int:
    w = client.wallet()
    if args.json:
        render.print_json(w)
        return 0
    c = format_credits
    modes = [m for m, on in (("sandbox (direct deposits and withdrawals)", w.get("sandbox")),
                             ("Stripe Checkout", w.get("stripe"))) if on]
    rows = [
        ("balance", c(int(w.get("balance", 0))), ""),
        ("held", c(int(w.get("pending_withdrawals", 0))), "withdrawals pending an admin"),
        ("in escrow", c(int(w.get("in_escrow", 0))), "funding your running tasks"),
        ("earned", c(int(w.get("earned", 0))), "for accepted chunks, ever"),
    ]
    width = max(len(r[1]) for r in rows)
    for label, value, note in rows:
        print(f"{label:<10}{value.rjust(width)}" + (f"  ({note})" if note else ""))
    print(f"{'deposits':<10}{' and '.join(modes) or 'off'}")
    return 0


def cmd_deposit(client: Client, args: argparse.Namespace) -> int:
    done = client.deposit(args.amount, idempotency_key=args.key, method=args.method)
    if args.json:
        render.print_json(done)
    elif done.get("checkout_url"):
        print(f"pay {format_credits(args.amount)} at: {done['checkout_url']}")
        print("the wallet is credited when the payment completes", file=sys.stderr)
    else:
        print(f"deposited {format_credits(args.amount)}; balance "
              f"{format_credits(int(done.get('balance') or 0))}")
    return 0


def cmd_withdraw(client: Client, args: argparse.Namespace) -> int:
    done = client.withdraw(args.amount, idempotency_key=args.key)
    if args.json:
        render.print_json(done)
    elif done.get("state") == "pending":
        print(f"withdrawal {done.get('id')} of {format_credits(args.amount)} is pending an "
              f"admin's approval; held {format_credits(int(done.get('pending_withdrawals', 0)))}"
              f", balance {format_credits(int(done.get('balance', 0)))}")
    else:
        print(f"withdrew {format_credits(args.amount)}; balance "
              f"{format_credits(int(done.get('balance', 0)))}")
    return 0


def cmd_transactions(client: Client, args: argparse.Namespace) -> int:
    page = client.transactions(args.offset, args.limit)
    if args.json:
        render.print_json(page)
        return 0
    items = page.get("transactions") or []
    if not items:
        print("no transactions in this range")
    else:
        rows = [[t.get("id"), render.format_time_ms(t.get("at_ms")),
                 t.get("kind") if t.get("account") == "wallet" else f"{t.get('kind')} (held)",
                 format_credits(int(t.get("amount", 0))), t.get("task_id"), t.get("chunk"),
                 t.get("memo") or None] for t in items]
        print(render.table(["ID", "WHEN", "KIND", "AMOUNT", "TASK", "CHUNK", "MEMO"], rows))
    if page.get("next_offset") is not None:
        print(f"more: --offset {page['next_offset']}", file=sys.stderr)
    return 0


def cmd_earnings(client: Client, args: argparse.Namespace) -> int:
    doc = client.earnings()
    if args.json:
        render.print_json(doc)
        return 0
    tasks = doc.get("tasks") or []
    if tasks:
        rows = [[t.get("task_id"), t.get("chunks"), format_credits(int(t.get("credited", 0)))]
                for t in tasks]
        print(render.table(["TASK", "CHUNKS", "CREDITED"], rows))
    print(f"total: {format_credits(int(doc.get('total', 0)))} for {doc.get('chunks', 0)} "
          "chunks")
    return 0


def cmd_task_fund(client: Client, args: argparse.Namespace) -> int:
    task = client.fund_task(args.id, args.amount)
    if args.json:
        render.print_json(task)
        return 0
    print(f"task {task.get('id', args.id)}: added {format_credits(args.amount)}; remaining "
          f"{format_credits(int(task.get('remaining', 0)))} · {render.task_state_label(task)}")
    return 0


def cmd_withdrawals(client: Client, args: argparse.Namespace) -> int:
    items = client.withdrawals()
    if args.json:
        render.print_json({"withdrawals": items})
    elif not items:
        print("no pending withdrawals")
    else:
        rows = [[w.get("id"), w.get("account_id"), format_credits(int(w.get("amount", 0))),
                 render.format_time_ms(w.get("created_ms"))] for w in items]
        print(render.table(["ID", "ACCOUNT", "AMOUNT", "REQUESTED"], rows))
    return 0


def _decide(client: Client, args: argparse.Namespace, approve: bool) -> int:
    w = client.decide_withdrawal(args.id, approve)
    if args.json:
        render.print_json(w)
    else:
        print(f"withdrawal {w.get('id')} of {format_credits(int(w.get('amount', 0)))} by "
              f"{w.get('account_id')}: {w.get('state')}")
    return 0


def cmd_approve(client: Client, args: argparse.Namespace) -> int:
    return _decide(client, args, approve=True)


def cmd_reject(client: Client, args: argparse.Namespace) -> int:
    return _decide(client, args, approve=False)
