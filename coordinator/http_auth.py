"""Authentication and error replies shared by the REST routes and sockets."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from coordinator.accounts import Account, Accounts, Role
from schema.rest import ErrorBody

JSON = "application/json"


class ApiError(Exception):
    """A refusal with a status and a message that says what to do next."""

    def __init__(self, status: int, error: str, field: str | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.field = field


def error_response(status: int, error: str, field: str | None = None) -> Response:
    return Response(msgspec.json.encode(ErrorBody(error, field)), status, media_type=JSON)


def json_response(body: object, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status, media_type=JSON)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def authenticate(request: Request, accounts: Accounts, *roles: Role) -> Account:
    token = bearer_token(request.headers)
    if token is None:
        raise ApiError(401, "sign in: send the header 'Authorization: Bearer <token>'")
    account = await accounts.authenticate(token)
    if account is None:
        raise ApiError(401, "unknown, revoked or expired token; ask an admin for a new one")
    if roles and account.role not in roles and account.role != "admin":
        raise ApiError(403, f"a {account.role} token cannot do this; it needs a "
                            f"{' or '.join(roles)} account's token")
    return account
