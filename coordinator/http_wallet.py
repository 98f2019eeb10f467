"""REST routes for money: wallets, deposits and withdrawals, admin decisions, Stripe.

Amounts are integer credits in the smallest unit (a float, bool or string is refused by the
body's Struct); every money request is an event for the core, which decides and answers
after the commit. Balances are read from the core's in-memory ledger, like the task views.
Starting credit: in sandbox mode every account gets ``DEV_INITIAL_WALLET`` credits once
(key ``initial:<account>``), at startup for accounts that exist and when one is created.
Deposits, Checkout sessions, credited webhooks, withdrawal requests and admin decisions are
audited once committed (coordinator/audit.py); a repeated request that moved nothing is not.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import TypeVar

import anyio
import msgspec
import stripe
from starlette.requests import Request
from starlette.responses import Response

from coordinator.accounts import Account, Accounts
from coordinator.config import Config
from coordinator.core.core import Core
from coordinator.core.events import Deposit, Withdraw, WithdrawalDecision
from coordinator.core.ledger import PLATFORM, escrow, pending, wallet
from coordinator.core.treasury import Withdrawal
from coordinator.http_auth import ApiError, authenticate, json_response, query_int
from coordinator.parsing import DECODE_ERRORS, whole_number
from coordinator.runtime import Runtime
from coordinator.store.sqlite import SqliteStore
from coordinator.stripe_pay import StripePay, WebhookError, credit_of
from schema.rest import (
    DepositRequest,
    DepositResult,
    Earnings,
    LedgerSummary,
    TaskEarnings,
    Transaction,
    TransactionPage,
    Wallet,
    WebhookAck,
    WithdrawalInfo,
    WithdrawalList,
    WithdrawRequest,
    WithdrawResult,
)

log = logging.getLogger("tn.wallet")

BODY_BYTES_MAX = 4096  # a money request's JSON body
WEBHOOK_BYTES_MAX = 1 << 20  # a Stripe event
PAGE_ROWS_MAX = 500

HOW_TO_DEPOSIT = (
    "deposits are off: set WALLET_SANDBOX_ENABLED=true for direct (test) deposits, or "
    "STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET to pay through Stripe Checkout"
)
USE_CHECKOUT = (
    "direct deposits are off on this coordinator (WALLET_SANDBOX_ENABLED=false); deposit "
    "through Stripe Checkout: POST /api/wallet/deposit without \"method\" (or `tn wallet "
    "deposit AMOUNT`) returns a checkout_url; the wallet is credited when the payment completes"
)

# (path, method, WalletApi method name)
WALLET_ROUTES = [
    ("/api/wallet", "GET", "get"),
    ("/api/wallet/deposit", "POST", "deposit"),
    ("/api/wallet/withdraw", "POST", "withdraw"),
    ("/api/wallet/transactions", "GET", "transactions"),
    ("/api/wallet/earnings", "GET", "earnings"),
    ("/api/admin/withdrawals", "GET", "withdrawals"),
    ("/api/admin/withdrawals/{withdrawal_id}/approve", "POST", "approve"),
    ("/api/admin/withdrawals/{withdrawal_id}/reject", "POST", "reject"),
    ("/api/admin/ledger", "GET", "ledger"),
    ("/api/stripe/webhook", "POST", "stripe_webhook"),
]

T = TypeVar("T")


def check_amount(amount: int, config: Config, name: str = "amount") -> int:
    """An amount a request may name: a whole number from 1 to TN_MONEY_AMOUNT_MAX."""
    if amount <= 0:
        raise ApiError(400, f"{name} must be a positive whole number of credits in the "
                            f"smallest unit (1234 is 12.34), got {amount}", name)
    if amount > config.money_amount_max:
        raise ApiError(400, f"{name} {amount} is over the {config.money_amount_max} limit "
                            "(TN_MONEY_AMOUNT_MAX)", name)
    return amount


async def read_body(request: Request, limit: int) -> bytes:
    length = whole_number(request.headers.get("content-length"))
    if length is not None and length > limit:
        raise ApiError(413, f"the body is {length} bytes; the limit here is {limit}")
    body = bytearray()
    async for block in request.stream():
        body += block
        if len(body) > limit:
            raise ApiError(413, f"the body is over the {limit}-byte limit here")
    return bytes(body)


async def decode_body(request: Request, kind: type[T]) -> T:
    """A JSON body as ``kind`` (a Struct); a mistake is a 400 naming the field."""
    raw = await read_body(request, BODY_BYTES_MAX)
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        found = re.search(r"\$\.(\w+)", text)
        field = found.group(1) if found else None
        if field == "amount":
            text = ("amount must be a whole number of credits in the smallest unit "
                    f"(1234 is 12.34): {text}")
        raise ApiError(400, f"bad body: {text}", field) from None
    except DECODE_ERRORS as exc:
        raise ApiError(400, f"send a JSON body such as {{\"amount\": 1000}}: {exc}") from None


class WalletApi:
    def __init__(self, config: Config, core: Core, runtime: Runtime, store: SqliteStore,
                 accounts: Accounts) -> None:
        self.config = config
        self.core = core
        self.runtime = runtime
        self.store = store
        self.accounts = accounts
        self.stripe = StripePay(config) if config.stripe_enabled else None

    # ---- starting credit --------------------------------------------------------------

    async def grant_initial(self, account_id: str) -> None:
        """Sandbox mode: ``dev_initial_wallet`` credits, once per account ever."""
        amount = self.config.dev_initial_wallet
        key = f"initial:{account_id}"
        if not self.config.wallet_sandbox_enabled or amount <= 0:
            return
        if self.core.treasury.ledger.seen(key):
            return
        reply = await self.runtime.call(Deposit(0, 0, account_id, amount, key, "initial"))
        if not reply.ok:
            log.warning("starting credit for %s refused: %s", account_id, reply.error)

    async def grant_initial_all(self) -> None:
        for account_id in await self.store.account_ids():
            await self.grant_initial(account_id)

    async def on_account_created(self, account: Account) -> None:
        await self.grant_initial(account.id)

    # ---- helpers ----------------------------------------------------------------------

    def _balances(self, account_id: str) -> tuple[int, int]:
        ledger = self.core.treasury.ledger
        return ledger.balance(wallet(account_id)), ledger.balance(pending(account_id))

    def _key(self, account: Account, given: str | None) -> str:
        return f"api:{account.id}:{given or 'auto-' + secrets.token_hex(12)}"

    # ---- wallet -----------------------------------------------------------------------

    async def get(self, request: Request) -> Response:
        account = await authenticate(request, self.accounts)
        balance, held = self._balances(account.id)
        ledger = self.core.treasury.ledger
        # a finished task's escrow went back to its owner: only live ones hold any
        in_escrow = sum(
            ledger.balance(escrow(t.id)) for t in self.core.tasks.values()
            if t.owner == account.id
        )
        await self.runtime.flushed()  # answer once what it shows is durable
        earned = sum(credited for _, _, credited in await self.store.earnings(wallet(account.id)))
        return json_response(Wallet(
            account_id=account.id, balance=balance, pending_withdrawals=held,
            in_escrow=in_escrow, earned=earned, sandbox=self.config.wallet_sandbox_enabled,
            stripe=self.stripe is not None,
        ))

    async def deposit(self, request: Request) -> Response:
        account = await authenticate(request, self.accounts)
        body = await decode_body(request, DepositRequest)
        amount = check_amount(body.amount, self.config)
        sandbox = self.config.wallet_sandbox_enabled
        method = body.method or ("direct" if sandbox else "checkout")
        key = self._key(account, body.idempotency_key)
        if method == "direct":
            if not sandbox:
                raise ApiError(400, USE_CHECKOUT if self.stripe else HOW_TO_DEPOSIT, "method")
            reply = await self.runtime.call(Deposit(0, 0, account.id, amount, key, "sandbox"))
            if not reply.ok:
                raise ApiError(reply.status, reply.error)
            balance = self._balances(account.id)[0]
            if reply.status == 201:  # 200: this key's deposit was made before
                await self.accounts.audit.record("wallet.deposit", account, request,
                                                 detail={"amount": amount, "method": "direct"})
            return json_response(DepositResult(amount, balance=balance), reply.status)
        if self.stripe is None and not sandbox:
            raise ApiError(400, HOW_TO_DEPOSIT)
        if self.stripe is None:
            raise ApiError(400, "Stripe Checkout is not configured on this coordinator (set "
                                "STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET); deposit "
                                "directly instead (leave out \"method\")", "method")
        pay = self.stripe
        try:
            session = await anyio.to_thread.run_sync(pay.checkout, account.id, amount, key)
        except stripe.StripeError as exc:
            log.warning("Stripe Checkout for %s failed: %s", account.id, exc)
            raise ApiError(502, f"Stripe did not create a Checkout Session: "
                                f"{exc.user_message or exc}; try again later") from None
        await self.accounts.audit.record("wallet.checkout", account, request,
                                         target=f"checkout:{session.id}",
                                         detail={"amount": amount})
        return json_response(DepositResult(amount, checkout_url=session.url,
                                           session_id=session.id), 201)

    async def withdraw(self, request: Request) -> Response:
        account = await authenticate(request, self.accounts)
        body = await decode_body(request, WithdrawRequest)
        amount = check_amount(body.amount, self.config)
        direct = self.config.wallet_sandbox_enabled
        key = self._key(account, body.idempotency_key)
        reply = await self.runtime.call(Withdraw(0, 0, account.id, amount, direct, key))
        if not reply.ok:
            raise ApiError(reply.status, reply.error)
        # the withdrawal's id is its transfer's, found by the key it was made under
        wid = await self.store.transfer_id(key)
        assert wid is not None, "a committed withdrawal has its transfer"
        balance, held = self._balances(account.id)
        await self.accounts.audit.record(
            "wallet.withdraw", account, request, target=f"withdrawal:{wid}",
            detail={"amount": amount, "state": "done" if direct else "pending"})
        return json_response(
            WithdrawResult(wid, amount, "done" if direct else "pending", balance, held),
            201 if direct else 202,
        )

    async def transactions(self, request: Request) -> Response:
        account = await authenticate(request, self.accounts)
        offset = query_int(request, "offset", 0, 0, 10**9)
        limit = query_int(request, "limit", 50, 1, PAGE_ROWS_MAX)
        await self.runtime.flushed()
        mine = {wallet(account.id): "wallet", pending(account.id): "pending"}
        rows = await self.store.entries_page(list(mine), offset, limit + 1)
        page = [
            Transaction(id=tid, kind=kind, account=mine[acct],  # type: ignore[arg-type]
                        amount=amount, at_ms=at_ms, task_id=task_id, chunk=chunk, memo=memo)
            for tid, kind, acct, amount, at_ms, task_id, chunk, memo in rows[:limit]
        ]
        nxt = offset + limit if len(rows) > limit else None
        return json_response(TransactionPage(page, nxt))

    async def earnings(self, request: Request) -> Response:
        account = await authenticate(request, self.accounts)
        await self.runtime.flushed()
        rows = await self.store.earnings(wallet(account.id))
        tasks = [TaskEarnings(task_id, chunks, credited) for task_id, chunks, credited in rows]
        return json_response(Earnings(tasks, sum(t.chunks for t in tasks),
                                      sum(t.credited for t in tasks)))

    # ---- admin ------------------------------------------------------------------------

    async def withdrawals(self, request: Request) -> Response:
        await authenticate(request, self.accounts, "admin")
        items = sorted(self.core.treasury.withdrawals.values(), key=lambda w: w.id)
        out = WithdrawalList([_withdrawal_info(w) for w in items])
        await self.runtime.flushed()
        return json_response(out)

    async def approve(self, request: Request) -> Response:
        return await self._decide(request, approve=True)

    async def reject(self, request: Request) -> Response:
        return await self._decide(request, approve=False)

    async def _decide(self, request: Request, approve: bool) -> Response:
        admin = await authenticate(request, self.accounts, "admin")
        raw = request.path_params["withdrawal_id"]
        wid = whole_number(raw)
        if wid is None:
            raise ApiError(404, f"no pending withdrawal {raw!r}; list them with "
                                "`tn admin withdrawals list`")
        w = self.core.treasury.withdrawals.get(wid)
        reply = await self.runtime.call(WithdrawalDecision(0, 0, wid, approve))
        if not reply.ok:
            raise ApiError(reply.status, reply.error)
        assert w is not None, "the core decided a withdrawal it did not hold"
        owner = await self.accounts.by_id(w.account_id)
        await self.accounts.audit.record(
            "withdrawal.approve" if approve else "withdrawal.reject", admin, request,
            target=f"withdrawal:{w.id}",
            detail={"amount": w.amount, "account": owner.name if owner else w.account_id})
        return json_response(_withdrawal_info(w))

    async def ledger(self, request: Request) -> Response:
        await authenticate(request, self.accounts, "admin")
        ledger = self.core.treasury.ledger
        sums = {"wallet": 0, "escrow": 0, "pending": 0}
        for name, amount in ledger.balances.items():
            prefix = name.partition(":")[0]
            if prefix in sums:
                sums[prefix] += amount
        out = LedgerSummary(sums["wallet"], sums["escrow"], sums["pending"],
                            ledger.balance(PLATFORM), ledger.deposited, ledger.withdrawn)
        await self.runtime.flushed()
        return json_response(out)

    # ---- Stripe -----------------------------------------------------------------------

    async def stripe_webhook(self, request: Request) -> Response:
        if self.stripe is None:
            raise ApiError(404, "Stripe is not configured on this coordinator (set "
                                "STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET)")
        payload = await read_body(request, WEBHOOK_BYTES_MAX)
        try:
            event = self.stripe.verify(payload, request.headers.get("stripe-signature"))
            credit = credit_of(event, self.config.money_amount_max)
            if credit is not None and not await self.store.account_exists(credit.account_id):
                raise WebhookError(f"unknown account {credit.account_id!r} in the metadata")
        except WebhookError as exc:
            log.warning("Stripe webhook refused: %s", exc.message)
            await self.accounts.audit.record("wallet.credit", None, request, ok=False,
                                             detail={"error": exc.message})  # not Stripe's
            raise ApiError(400, exc.message) from None
        if credit is None:
            return json_response(WebhookAck(received=True))
        reply = await self.runtime.call(
            Deposit(0, 0, credit.account_id, credit.amount, credit.key, "stripe"))
        if not reply.ok:
            log.error("Stripe deposit %s refused by the core: %s", credit.key, reply.error)
            raise ApiError(reply.status, reply.error)
        if reply.status == 201:  # 200: a re-delivery, credited before
            owner = await self.accounts.by_id(credit.account_id)
            await self.accounts.audit.record(
                "wallet.credit", None, request, actor_name="stripe",
                target=f"account:{owner.name if owner else credit.account_id}",
                detail={"amount": credit.amount, "event": credit.event_id})
        return json_response(WebhookAck(received=True, credited=reply.status == 201))


def _withdrawal_info(w: Withdrawal) -> WithdrawalInfo:
    return WithdrawalInfo(w.id, w.account_id, w.amount, w.state,  # type: ignore[arg-type]
                          w.created_ms)



__all__ = ["WALLET_ROUTES", "WalletApi", "check_amount", "decode_body"]
