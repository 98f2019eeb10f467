"""REST bodies of the money routes: integer credits only, within the configured limit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request

from coordinator.accounts import Account, Accounts
from coordinator.config import Config
from coordinator.http_api import ROUTES
from coordinator.http_auth import ApiError
from coordinator.http_wallet import (
    WALLET_ROUTES,
    WalletApi,
    check_amount,
    decode_body,
    read_body,
)
from coordinator.openapi import openapi_document
from coordinator.store.sqlite import SqliteStore
from schema.rest import DepositRequest, FundRequest, WithdrawRequest


def request(body: bytes, length: int | None = None) -> Request:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    size = len(body) if length is None else length
    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
             "headers": [(b"content-length", str(size).encode())]}
    return Request(scope, receive)


def raw(doc: object) -> bytes:
    return json.dumps(doc).encode()


async def test_integer_amounts_decode() -> None:
    body = await decode_body(request(raw({"amount": 1234, "idempotency_key": "k1"})),
                             DepositRequest)
    assert (body.amount, body.idempotency_key, body.method) == (1234, "k1", None)
    assert (await decode_body(request(raw({"amount": 5})), FundRequest)).amount == 5


@pytest.mark.parametrize(("doc", "field"), [
    ({"amount": 12.5}, "amount"),
    ({"amount": 12.0}, "amount"),
    ({"amount": "12"}, "amount"),
    ({"amount": True}, "amount"),
    ({"amount": None}, "amount"),
    ({}, None),  # missing
    ({"amount": 5, "currency": "usd"}, None),  # unknown fields are refused
    ({"amount": 5, "method": "cash"}, "method"),
    ({"amount": 5, "idempotency_key": ""}, "idempotency_key"),
    ({"amount": 5, "idempotency_key": "k" * 201}, "idempotency_key"),
    ([5], None),
])
async def test_bad_bodies_are_400_naming_the_field(doc: object, field: str | None) -> None:
    with pytest.raises(ApiError) as err:
        await decode_body(request(raw(doc)), DepositRequest)
    assert err.value.status == 400 and err.value.field == field, err.value.error
    if field == "amount":
        assert "whole number" in err.value.error


async def test_not_json_and_too_big() -> None:
    with pytest.raises(ApiError) as err:
        await decode_body(request(b"amount=5"), WithdrawRequest)
    assert err.value.status == 400 and '{"amount": 1000}' in err.value.error
    with pytest.raises(ApiError) as err:
        await read_body(request(b"{}", length=10_000), 4096)
    assert err.value.status == 413
    with pytest.raises(ApiError) as err:  # a lying Content-Length is caught while reading
        await read_body(request(b" " * 5000, length=10), 4096)
    assert err.value.status == 413


def test_amount_limits_name_the_variable() -> None:
    config = dataclasses.replace(Config(), money_amount_max=1000)
    assert check_amount(1, config) == 1 and check_amount(1000, config) == 1000
    for bad in (0, -1):
        with pytest.raises(ApiError, match="positive whole number") as err:
            check_amount(bad, config)
        assert err.value.status == 400
    with pytest.raises(ApiError, match=r"over the 1000 limit \(TN_MONEY_AMOUNT_MAX\)"):
        check_amount(1001, config)
    with pytest.raises(ApiError, match="TN_MONEY_AMOUNT_MAX"):
        check_amount(10**30, config)


def test_every_route_of_the_app_is_documented(tmp_path: Path) -> None:
    """Every REST route the app serves (not the dashboard's files) is in openapi.json, with
    the 429 answer of the rate limit."""
    from starlette.routing import Route

    from coordinator.app import create_app
    from coordinator.config import Config
    from coordinator.dashboard import Static

    paths = openapi_document()["paths"]
    files = set(Static().paths())
    served = [(r.path, m) for r in create_app(Config(data_dir=tmp_path)).routes
              if isinstance(r, Route) and r.path not in files and r.path != "/openapi.json"
              for m in (r.methods or ()) if m != "HEAD"]
    assert len(served) > 30, served
    for path, method in served:
        op = paths.get(path, {}).get(method.lower())
        assert op is not None, f"{method} {path} is not in openapi.json"
        assert "429" in op["responses"], f"{method} {path}: no 429 documented"


def test_every_money_route_is_documented() -> None:
    paths = openapi_document()["paths"]
    fund = [r for r in ROUTES if r[2] == "fund"]
    assert fund == [("/api/tasks/{task_id}/fund", "POST", "fund")]
    for path, method, _ in [*fund, *WALLET_ROUTES]:
        assert method.lower() in paths.get(path, {}), f"{method} {path} is not in openapi.json"


class _Accounts:
    """Stands in for coordinator.accounts.Accounts: every token is alice's."""

    async def authenticate(self, token: str) -> Account:
        return Account("a_alice", "alice", "customer")


def _wallet_api(**config: Any) -> WalletApi:
    cfg = dataclasses.replace(Config(), **config)
    return WalletApi(cfg, None, None, None, _Accounts())  # type: ignore[arg-type]


def _authed(body: bytes) -> Request:
    req = request(body)
    req.scope["headers"].append((b"authorization", b"Bearer tok"))
    return req


async def test_with_neither_sandbox_nor_stripe_deposits_say_how() -> None:
    api = _wallet_api(wallet_sandbox_enabled=False)
    for body in ({"amount": 5}, {"amount": 5, "method": "direct"},
                 {"amount": 5, "method": "checkout"}):
        with pytest.raises(ApiError) as err:
            await api.deposit(_authed(raw(body)))
        assert err.value.status == 400
        assert "WALLET_SANDBOX_ENABLED=true" in err.value.error
        assert "STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET" in err.value.error
    with pytest.raises(ApiError, match="not configured") as err:
        await _wallet_api().stripe_webhook(_authed(b"{}"))
    assert err.value.status == 404


async def test_accounts_created_later_get_the_hook(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "db.sqlite3")
    try:
        accounts = Accounts(store)
        made: list[str] = []

        async def on_created(account: Account) -> None:
            made.append(account.name)

        accounts.on_created = on_created
        bob = await accounts.create("bob", "worker")
        assert made == ["bob"]
        assert await store.account_ids() == [bob.id]
        assert await store.account_exists(bob.id) and not await store.account_exists("a_x")
    finally:
        await store.close()
