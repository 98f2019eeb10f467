"""``tn-coordinator``: serve the REST API, worker and live WebSockets, on SQLite."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import logging
import sys
from pathlib import Path

import anyio
import uvicorn

from coordinator.accounts import ROLES, Account, Accounts, hash_token, token_id, utc_text
from coordinator.app import create_app
from coordinator.audit import AuditLog
from coordinator.config import Config, from_env
from coordinator.store.sqlite import SqliteStore


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
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["user"]:
        return user_main(args[1:])
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


# ---- tn-coordinator user: accounts with passwords, on the database of a stopped coordinator ----


def user_main(argv: list[str]) -> int:
    """``tn-coordinator user add NAME --role R --password-stdin [--token]`` and
    ``tn-coordinator user passwd NAME --password-stdin``. Run them while the coordinator is
    stopped (they open its SQLite database directly); the password is read from stdin. Each
    change is audited with the actor ``console`` (and the operating-system user)."""
    p = argparse.ArgumentParser(prog="tn-coordinator user", description=user_main.__doc__)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="the coordinator's data directory (default ./storage or TN_DATA_DIR)")
    sub = p.add_subparsers(dest="command", required=True)
    here = argparse.ArgumentParser(add_help=False)  # --data-dir also after the command
    here.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    add = sub.add_parser("add", help="create an account (with a password)", parents=[here])
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from stdin (one line)")
    add.add_argument("--token", action="store_true", help="also issue and print an API token")
    passwd = sub.add_parser("passwd", help="set an existing account's password",
                            parents=[here])
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true", required=True)
    args = p.parse_args(argv)
    config = from_env(Config())
    config = dataclasses.replace(config, data_dir=args.data_dir or config.data_dir)
    password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else ""
    if args.password_stdin and not password:
        print("tn-coordinator user: the password on stdin is empty", file=sys.stderr)
        return 2
    try:
        return anyio.run(_user, config, args, password)
    except ValueError as exc:
        print(f"tn-coordinator user: {exc}", file=sys.stderr)
        return 1


async def _user(config: Config, args: argparse.Namespace, password: str) -> int:
    store = await SqliteStore.open(config.db_path)
    try:
        accounts = Accounts(store, AuditLog(store, config))
        await accounts.ensure_auth_tables()
        account = await accounts.by_name(args.name)
        if args.command == "add":
            if account is not None:
                raise ValueError(f"an account named {args.name!r} exists; change its password "
                                 "with `tn-coordinator user passwd`")
            account = await accounts.create(args.name, args.role)
            await _audit(accounts, "account.create", account.name, {"role": account.role})
            print(f"created {account.role} {account.name} ({account.id})")
            if args.token:
                await _user_token(config, accounts, account)
        elif account is None:
            raise ValueError(f"no account named {args.name!r}")
        if password:
            await accounts.set_password(account, password)
            await _audit(accounts, "account.password", account.name, {})
            print(f"password set for {account.name}")
        return 0
    finally:
        await store.close()


async def _user_token(config: Config, accounts: Accounts, account: Account) -> None:
    """``user add --token``: a token with the default lifetime (TN_TOKEN_LIFETIME_MAX_S), the
    same as ``tn token create`` without ``--expires`` gets."""
    most_s = config.token_lifetime_max_s
    token = await accounts.issue_token(account, "user add", most_s * 1000 if most_s > 0 else None)
    row = await accounts.find_token(token_id(hash_token(token)), account.id)
    assert row is not None, "a committed token is found by its id"
    await accounts.audit.record(
        "token.create", None, actor_name="console", target=row.id,
        detail={"account": account.name, "label": "user add", "expires_ms": row.expires_ms,
                **_os_user()})
    print(f"token: {token}")
    if row.expires_ms is None:
        print("the token never expires (TN_TOKEN_LIFETIME_MAX_S=0); revoke it with "
              f"`tn token revoke {row.id}` when no longer needed")
    else:
        print(f"the token expires at {utc_text(row.expires_ms)} "
              f"(TN_TOKEN_LIFETIME_MAX_S={most_s}); create the next with `tn token create`")


async def _audit(accounts: Accounts, action: str, name: str, detail: dict[str, str]) -> None:
    await accounts.audit.record(action, None, actor_name="console", target=f"account:{name}",
                                detail={**detail, **_os_user()})


def _os_user() -> dict[str, str]:
    """Who ran ``tn-coordinator user`` on this machine, as far as it can tell."""
    try:
        return {"os_user": getpass.getuser()}
    except (OSError, KeyError):
        return {}


if __name__ == "__main__":
    sys.exit(main())
