"""The OpenAPI document, generated from the schema/ Structs (the single source of truth)."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from schema.rest import (
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
    TaskSpec,
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
           TransactionPage, Earnings, WithdrawalInfo, WithdrawalList, LedgerSummary, WebhookAck)


def _ref(model: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _op(summary: str, ok: type | None, status: int = 200, **extra: Any) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(status): {"description": "OK", **(
            {"content": {"application/json": {"schema": _ref(ok)}}} if ok else {})},
        "default": {"description": "error",
                    "content": {"application/json": {"schema": _ref(ErrorBody)}}},
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
            "/api/tasks/{task_id}": {"get": _op("One task", TaskInfo, parameters=_TASK_ID)},
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
            **_money_paths(),
        },
    }
