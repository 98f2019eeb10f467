"""The OpenAPI document, generated from the schema/ Structs (the single source of truth)."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from coordinator.dashboard import SessionInfo, SignIn
from schema.rest import (
    AuditPage,
    ChunkDetail,
    ChunkPage,
    DepositRequest,
    DepositResult,
    Earnings,
    ErrorBody,
    FundRequest,
    Health,
    LedgerSummary,
    TaskCreated,
    TaskInfo,
    TaskList,
    TaskPatch,
    TaskSpec,
    TokenCreate,
    TokenCreated,
    TokenInfo,
    TokenList,
    TransactionPage,
    Wallet,
    WebhookAck,
    WithdrawalInfo,
    WithdrawalList,
    WithdrawRequest,
    WithdrawResult,
)

_MODELS = (TaskSpec, TaskInfo, TaskCreated, TaskList, ChunkPage, ChunkDetail, ErrorBody, Health,
           DepositRequest, WithdrawRequest, FundRequest, Wallet, DepositResult, WithdrawResult,
           TransactionPage, Earnings, WithdrawalInfo, WithdrawalList, LedgerSummary, WebhookAck,
           TokenCreate, TokenCreated, TokenInfo, TokenList, AuditPage, TaskPatch, SignIn,
           SessionInfo)


def _ref(model: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


_ERROR = {"content": {"application/json": {"schema": _ref(ErrorBody)}}}


def _op(summary: str, ok: type | None, status: int = 200, **extra: Any) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(status): {"description": "OK", **(
            {"content": {"application/json": {"schema": _ref(ok)}}} if ok else {})},
        "429": {"description": "over the REST rate (TN_REST_REQUESTS_PER_S); retry after the "
                               "Retry-After header's seconds",
                "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
                **_ERROR},
        "default": {"description": "error", **_ERROR},
    }
    return {"summary": summary, "responses": responses, **extra}


_TASK_ID = [{"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}]
_WITHDRAWAL_ID = [{"name": "withdrawal_id", "in": "path", "required": True,
                   "schema": {"type": "integer"}}]


def _json_body(model: type) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(model)}}}


def _money_paths() -> dict[str, Any]:
    page = [
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "limit", "in": "query",
         "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
    ]
    webhook_body = {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "description": "a Stripe event, signed (Stripe-Signature header)"}}}}
    return {
        "/api/tasks/{task_id}/fund": {"post": _op(
            "Move credits from your wallet into your task's escrow", TaskInfo,
            parameters=_TASK_ID, requestBody=_json_body(FundRequest))},
        "/api/wallet": {"get": _op("Your balance, held withdrawals, escrow and earnings",
                                   Wallet)},
        "/api/wallet/deposit": {"post": _op(
            "Deposit: direct in sandbox mode (201, new balance), else a Stripe Checkout URL",
            DepositResult, 201, requestBody=_json_body(DepositRequest))},
        "/api/wallet/withdraw": {"post": _op(
            "Withdraw: direct in sandbox mode (201), else pending an admin (202)",
            WithdrawResult, 202, requestBody=_json_body(WithdrawRequest))},
        "/api/wallet/transactions": {"get": _op(
            "Entries on your wallet with their cause, newest first", TransactionPage,
            parameters=page)},
        "/api/wallet/earnings": {"get": _op("Payouts for accepted chunks, per task",
                                            Earnings)},
        "/api/admin/withdrawals": {"get": _op("Pending withdrawals (admin)", WithdrawalList)},
        "/api/admin/withdrawals/{withdrawal_id}/approve": {"post": _op(
            "Approve a pending withdrawal (admin)", WithdrawalInfo, parameters=_WITHDRAWAL_ID)},
        "/api/admin/withdrawals/{withdrawal_id}/reject": {"post": _op(
            "Reject a pending withdrawal: its amount returns to the wallet (admin)",
            WithdrawalInfo, parameters=_WITHDRAWAL_ID)},
        "/api/admin/ledger": {"get": _op("Where the money is (admin)", LedgerSummary)},
        "/api/stripe/webhook": {"post": _op(
            "Stripe events; checkout.session.completed credits the wallet once per event",
            WebhookAck, security=[], requestBody=webhook_body)},
    }


def _task_control_paths() -> dict[str, Any]:
    return {
        "/api/tasks/{task_id}/pause": {"post": _op(
            "Pause a task: no new leases; running chunks finish", TaskInfo,
            parameters=_TASK_ID)},
        "/api/tasks/{task_id}/resume": {"post": _op("Resume a paused task", TaskInfo,
                                                    parameters=_TASK_ID)},
        "/api/tasks/{task_id}/chunk-states": {"get": _op(
            "One byte per chunk (0 pending, 1 leased, 2 done, 3 failed) as "
            "application/octet-stream; X-TN-Chunk-Seq names the last live update included",
            None, parameters=_TASK_ID)},
    }


def _browser_paths() -> dict[str, Any]:
    return {
        "/auth/session": {"get": _op(
            "Who the session cookie signs in, and the CSRF token to send as X-CSRF-Token",
            SessionInfo, security=[])},
        "/auth/signin": {"post": _op(
            "Sign in with a name and password (or a token); sets the HttpOnly session "
            "cookie. Only from this coordinator's own pages (Origin checked)", SessionInfo,
            security=[], requestBody=_json_body(SignIn))},
        "/auth/signout": {"post": _op("End the browser session", SessionInfo)},
    }


def _token_paths() -> dict[str, Any]:
    token_id = [{"name": "token_id", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": "^tk_[0-9a-f]{12}$"}}]
    account = [{"name": "account", "in": "query", "schema": {"type": "string"},
                "description": "admins: another account's name"}]
    revoke = _op("Revoke one of your tokens at once (admins: anyone's); another account's "
                 "id answers 404", TokenInfo, parameters=token_id)
    audit = [
        {"name": "action", "in": "query", "schema": {"type": "string"},
         "description": "e.g. signin, token.create, wallet.deposit, access.forbidden"},
        {"name": "actor", "in": "query", "schema": {"type": "string"},
         "description": "an account name, or console / stripe"},
        {"name": "since_ms", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "before_id", "in": "query", "schema": {"type": "integer", "minimum": 1},
         "description": "the previous page's next_before_id"},
        {"name": "limit", "in": "query",
         "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
    ]
    return {
        "/api/tokens": {
            "post": _op("Create a token; the response holds it, shown this once",
                        TokenCreated, 201, requestBody=_json_body(TokenCreate)),
            "get": _op("Your tokens (never the secrets): live first", TokenList,
                       parameters=account),
        },
        "/api/tokens/{token_id}": {"delete": revoke},
        "/api/tokens/{token_id}/revoke": {"post": revoke},
        "/api/admin/audit": {"get": _op("The audit log, newest first (admin)", AuditPage,
                                        parameters=audit)},
    }


@cache
def openapi_document() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        _MODELS, ref_template="#/components/schemas/{name}"
    )
    upload = {
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["code", "data"],
            "properties": {
                "code": {"type": "string", "format": "binary",
                         "description": "main.py, or a .zip with main.py at its root"},
                "data": {"type": "string", "format": "binary",
                         "description": "a JSON array, JSON Lines or CSV file"},
                "spec": {"type": "string", "description": "TaskSpec as JSON"},
            }}}},
    }
    results_params = [
        *_TASK_ID,
        {"name": "format", "in": "query", "schema": {"enum": ["json", "jsonl"]}},
        {"name": "partial", "in": "query", "schema": {"type": "boolean"}},
    ]
    page_params = [
        *_TASK_ID,
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "limit", "in": "query",
         "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Task Network", "version": "0.1.0"},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": _op("Ready check", Health, security=[])},
            "/api/tasks": {
                "post": _op("Create a task", TaskCreated, 201, requestBody=upload),
                "get": _op("List your tasks", TaskList),
            },
            "/api/tasks/{task_id}": {
                "get": _op("One task", TaskInfo, parameters=_TASK_ID),
                "patch": _op("Change a live task's concurrency cap or priority", TaskInfo,
                             parameters=_TASK_ID, requestBody=_json_body(TaskPatch)),
            },
            "/api/tasks/{task_id}/chunks": {
                "get": _op("A page of a task's chunks", ChunkPage, parameters=page_params)},
            "/api/tasks/{task_id}/chunks/{index}": {
                "get": _op("One chunk: its failed attempts and a result preview", ChunkDetail,
                           parameters=[*_TASK_ID, {"name": "index", "in": "path",
                                                   "required": True,
                                                   "schema": {"type": "integer"}}])},
            "/api/tasks/{task_id}/results": {
                "get": _op("Outputs in item order (streamed)", None,
                           parameters=results_params)},
            "/api/tasks/{task_id}/cancel": {
                "post": _op("Cancel a task", TaskInfo, parameters=_TASK_ID)},
            "/api/tasks/{task_id}/code": {
                "get": _op("The task's code as a zip (for workers holding a lease)", None,
                           parameters=_TASK_ID)},
            **_task_control_paths(),
            **_money_paths(),
            **_token_paths(),
            **_browser_paths(),
        },
    }
