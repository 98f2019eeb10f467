"""``tn token create|list|revoke`` and ``tn audit`` (admins).

A token is printed once, by ``create``, alone on stdout (so ``TN_TOKEN=$(tn token create
--label ci)`` works) with a warning on stderr that it will not be shown again: the coordinator
keeps only its hash. Everything else names tokens by their public id (``tk_...``).

Durations (``--expires``, ``--since``) are a whole number with a unit: ``3600s``, ``45m``,
``12h``, ``30d``, ``2w`` (a bare number is seconds); ``--since`` also takes a UTC date or time
(``2025-01-31``, ``2025-01-31T12:00``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from client import render
from client.sdk import Client

Command = Callable[[Client, argparse.Namespace], int]

_DURATION = re.compile(r"([0-9]{1,12})([smhdw]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
DURATION_S_MAX = 100 * 365 * 86_400  # beyond any coordinator's limit; it names its own
DETAIL_CHARS_MAX = 80  # an audit row's detail is cut to this in the table


def parse_duration(text: str) -> int:
    """``"30d"`` -> 2592000 seconds; ValueError (saying why) for anything else."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (write a whole number with a unit: "
                         "3600s, 45m, 12h, 30d or 2w)")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"must be more than 0, got {text!r}")
    if seconds > DURATION_S_MAX:
        raise ValueError(f"{text!r} is longer than 100 years")
    return seconds


duration_arg = render.arg_type(parse_duration)  # an argparse ``type``: "30d" -> seconds


def since_arg(text: str, now_s: float | None = None) -> int:
    """``--since``: a duration ago, or a UTC date or time; as Unix milliseconds."""
    now_s = time.time() if now_s is None else now_s
    try:
        return int((now_s - parse_duration(text)) * 1000)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration or a date: {text!r} (write e.g. 2h, 7d, 2025-01-31 or "
            "2025-01-31T12:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0, int(when.timestamp() * 1000))


# ---- parsers -----------------------------------------------------------------------------


def add_groups(top: Any, common: argparse.ArgumentParser) -> None:
    """The ``token`` command group and the ``audit`` command."""
    group = top.add_parser("token", parents=[common], help="your API tokens: create, list, "
                                                          "revoke")
    sub = group.add_subparsers(dest="command", metavar="COMMAND")

    def command(parent: Any, name: str, func: Command, help_text: str) -> Any:
        return render.add_command(parent, common, name, func, help_text)

    p = command(sub, "create", cmd_create, "create a token; it is printed once, never again")
    p.add_argument("--label", required=True, help="where it is used, e.g. laptop or ci")
    p.add_argument("--expires", type=duration_arg, metavar="DURATION",
                   help="lifetime, e.g. 30d, 12h or 3600s (default: the coordinator's "
                        "longest, TN_TOKEN_LIFETIME_MAX_S)")
    p.add_argument("--account", metavar="NAME", help="admins: issue it for this account")
    p = command(sub, "list", cmd_list, "list your tokens (ids and labels, never the secrets)")
    p.add_argument("--account", metavar="NAME", help="admins: this account's tokens")
    p = command(sub, "revoke", cmd_revoke, "revoke a token at once (its sessions are closed)")
    p.add_argument("id", help="the token's id, tk_... (see `tn token list`)")

    p = command(top, "audit", cmd_audit, "admin: the audit log, newest first")
    p.add_argument("--action", help="only this action, e.g. signin, token.create, "
                                    "wallet.deposit, access.forbidden")
    p.add_argument("--actor", metavar="NAME", help="only this actor (an account name, console "
                                                   "or stripe)")
    p.add_argument("--since", type=since_arg, metavar="WHEN",
                   help="only since then: a duration ago (2h, 7d) or a UTC date/time")
    p.add_argument("--limit", type=int, default=50, help="rows per page (1 to 500)")
    p.add_argument("--before-id", type=int, metavar="ID", help="older than this row (paging)")


# ---- commands ----------------------------------------------------------------------------


def cmd_create(client: Client, args: argparse.Namespace) -> int:
    made = client.create_token(args.label, expires_in_s=args.expires, account=args.account)
    if args.json:
        render.print_json(made)
    else:
        print(made.get("token"))
    expires = made.get("expires_ms")
    print(f"created {made.get('id')} ({made.get('label')}) for {made.get('account')}; "
          f"{'expires ' + render.format_time_ms(expires) if expires else 'never expires'}",
          file=sys.stderr)
    print("this is the only time the token is shown: store it now (e.g. as TN_TOKEN); "
          "if it is lost, revoke it and create another", file=sys.stderr)
    return 0


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    items = client.tokens(args.account)
    if args.json:
        render.print_json({"tokens": items})
    elif not items:
        print("no tokens")
    else:
        rows = [[t.get("id"), t.get("label"), t.get("state"),
                 render.format_time_ms(t.get("created_ms")),
                 render.format_time_ms(t.get("expires_ms")) if t.get("expires_ms") else "never",
                 render.format_time_ms(t.get("revoked_ms"))] for t in items]
        print(render.table(["ID", "LABEL", "STATE", "CREATED", "EXPIRES", "REVOKED"], rows))
    return 0


def cmd_revoke(client: Client, args: argparse.Namespace) -> int:
    t = client.revoke_token(args.id)
    if args.json:
        render.print_json(t)
    else:
        print(f"revoked {t.get('id')} ({t.get('label')}) of {t.get('account')} at "
              f"{render.format_time_ms(t.get('revoked_ms'))}")
    return 0


def cmd_audit(client: Client, args: argparse.Namespace) -> int:
    page = client.audit(action=args.action, actor=args.actor, since_ms=args.since,
                        before_id=args.before_id, limit=args.limit)
    if args.json:
        render.print_json(page)
        return 0
    entries = page.get("entries") or []
    if not entries:
        print("no audit rows match")
    else:
        rows = [[e.get("id"), render.format_time_ms(e.get("at_ms")), e.get("actor_name") or None,
                 e.get("action"), e.get("target") or None, e.get("outcome"),
                 e.get("ip") or None, _detail(e.get("detail"))] for e in entries]
        print(render.table(["ID", "WHEN", "ACTOR", "ACTION", "TARGET", "OUTCOME", "FROM",
                            "DETAIL"], rows))
    if page.get("next_before_id") is not None:
        print(f"more: --before-id {page['next_before_id']}", file=sys.stderr)
    return 0


def _detail(detail: Any) -> str | None:
    """``key=value`` pairs on one line (values as JSON), cut to DETAIL_CHARS_MAX."""
    if not isinstance(detail, dict) or not detail:
        return None
    text = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in detail.items())
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= DETAIL_CHARS_MAX else text[:DETAIL_CHARS_MAX - 1] + "…"
