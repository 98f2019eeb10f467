"""REST routes for API tokens (create, list, revoke) and the admin audit log.

Anyone signed in, with a bearer token or a browser session (whose changes carry the CSRF
token, see http_auth), manages their own account's tokens; an admin may name another
account. A token is returned once, by ``POST /api/tokens``; listings show its public id
(``tk_`` + 12 hex digits of its hash, see coordinator/accounts.py), never the token or its
hash. Another account's token id answers 404 exactly like an unknown one, so ids cannot be
probed. Each creation and revocation is audited after it commits (coordinator/audit.py).

A token never outlives the one that made it: when the caller's credential rests on a token
that expires (a bearer token, or the token its browser signed in with), the new token expires
no later than that one, whatever it asked for (clamped, not refused; the 201's ``expires_ms``
says when). Otherwise a token that leaked could mint a longer-lived one and outlast itself.
"""

from __future__ import annotations

import re
import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from coordinator.accounts import (
    Account,
    Accounts,
    TokenRow,
    TooManyTokens,
    hash_token,
    token_id,
)
from coordinator.config import Config
from coordinator.http_auth import (
    ApiError,
    authenticate,
    credential_expiry,
    json_response,
    query_int,
)
from coordinator.http_wallet import read_body
from coordinator.parsing import DECODE_ERRORS
from schema.rest import (
    TOKEN_LABEL_CHARS_MAX,
    AuditPage,
    TokenCreate,
    TokenCreated,
    TokenInfo,
    TokenList,
)

BODY_BYTES_MAX = 4096
AUDIT_PAGE_ROWS_MAX = 500
QUERY_TEXT_CHARS_MAX = 200

# (path, method, TokenApi method name)
TOKEN_ROUTES = [
    ("/api/tokens", "POST", "create"),
    ("/api/tokens", "GET", "list"),
    ("/api/tokens/{token_id}", "DELETE", "revoke"),
    ("/api/tokens/{token_id}/revoke", "POST", "revoke"),
    ("/api/admin/audit", "GET", "audit"),
]

EXAMPLE = '{"label": "laptop", "expires_in_s": 2592000}'


class TokenApi:
    def __init__(self, config: Config, accounts: Accounts) -> None:
        self.config = config
        self.accounts = accounts

    # ---- tokens -----------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        caller = await authenticate(request, self.accounts)
        body = self._decode(await read_body(request, BODY_BYTES_MAX))
        owner = await self._owner(caller, body.account)
        if not body.label.strip() or not body.label.isprintable():
            raise ApiError(400, "label must be printable text (no control characters), not "
                                "only spaces, e.g. \"laptop\"", "label")
        lifetime_s = self._lifetime_s(body.expires_in_s)
        lifetime_ms = None if lifetime_s is None else lifetime_s * 1000
        limit = self.config.tokens_per_account_max
        expires_by_ms = await credential_expiry(request, self.accounts)  # see the notes above
        try:
            token = await self.accounts.issue_token(owner, body.label, lifetime_ms, limit,
                                                    expires_by_ms)
        except TooManyTokens as exc:
            raise ApiError(409, f"{owner.name} has {exc.live} live tokens, the most allowed "
                                "(TN_TOKENS_PER_ACCOUNT_MAX); revoke one no longer used with "
                                "`tn token revoke ID` (see `tn token list`)") from None
        row = await self.accounts.find_token(token_id(hash_token(token)), owner.id)
        assert row is not None, "a committed token is found by its id"
        await self.accounts.audit.record(
            "token.create", caller, request, target=row.id,
            detail={"account": owner.name, "label": row.label, "expires_ms": row.expires_ms,
                    "capped": expires_by_ms is not None and row.expires_ms == expires_by_ms})
        return json_response(TokenCreated(row.id, token, row.label, owner.name,
                                          row.created_ms, row.expires_ms), 201)

    async def list(self, request: Request) -> Response:
        caller = await authenticate(request, self.accounts)
        owner = await self._owner(caller, request.query_params.get("account"))
        now = int(time.time() * 1000)
        rows = await self.accounts.tokens_of(owner.id, now)
        return json_response(TokenList([_info(r, now) for r in rows]))

    async def revoke(self, request: Request) -> Response:
        caller = await authenticate(request, self.accounts)
        public_id = request.path_params["token_id"]
        scope = None if caller.role == "admin" else caller.id
        row = await self.accounts.find_token(public_id, scope)
        if row is None:  # unknown and another account's look the same
            raise ApiError(404, f"no token {public_id[:40]!r} among yours; list them with "
                                "`tn token list`")
        was_revoked = row.revoked_ms is not None or self.accounts.revoked_at(row.hash) is not None
        row = await self.accounts.revoke_token(row)
        if not was_revoked:
            await self.accounts.audit.record(
                "token.revoke", caller, request, target=row.id,
                detail={"account": row.account_name, "label": row.label})
        return json_response(_info(row, int(time.time() * 1000)))

    # ---- the audit log (admins) -------------------------------------------------------

    async def audit(self, request: Request) -> Response:
        await authenticate(request, self.accounts, "admin")
        limit = query_int(request, "limit", 100, 1, AUDIT_PAGE_ROWS_MAX)
        since_ms = query_int(request, "since_ms", 0, 0, 10**15)
        before_id = query_int(request, "before_id", 0, 1, 2**62) or None
        entries = await self.accounts.audit.page(
            action=_text_param(request, "action"), actor=_text_param(request, "actor"),
            since_ms=since_ms, before_id=before_id, limit=limit + 1)
        more = len(entries) > limit
        entries = entries[:limit]
        return json_response(AuditPage(entries, entries[-1].id if more else None))

    # ---- helpers ----------------------------------------------------------------------

    def _decode(self, raw: bytes) -> TokenCreate:
        try:
            return msgspec.json.decode(raw, type=TokenCreate)
        except msgspec.ValidationError as exc:
            text = str(exc)
            found = re.search(r"\$\.(\w+)|field `(\w+)`", text)
            field = (found.group(1) or found.group(2)) if found else None
            hints = {
                "label": f"label must be text of 1 to {TOKEN_LABEL_CHARS_MAX} characters "
                         "naming where the token is used, e.g. \"laptop\"",
                "expires_in_s": self._lifetime_hint(),
                "account": "account must be the name of an account (admins only)",
            }
            hint = hints.get(field or "", f"send a JSON object such as {EXAMPLE}")
            raise ApiError(400, f"{hint} ({text})", field) from None
        except DECODE_ERRORS as exc:
            raise ApiError(400, f"send a UTF-8 JSON body such as {EXAMPLE}: {exc}") from None

    def _lifetime_hint(self) -> str:
        most = self.config.token_lifetime_max_s
        upto = f"from 1 to {most} (TN_TOKEN_LIFETIME_MAX_S)" if most > 0 else "of at least 1"
        return (f"expires_in_s must be a whole number of seconds {upto}, e.g. 2592000 for 30 "
                "days; leave it out for the longest lifetime allowed (never past the expiry "
                "of the token you call with)")

    def _lifetime_s(self, asked: int | None) -> int | None:
        """The lifetime to give: what was asked, within the maximum; None: no expiry."""
        most = self.config.token_lifetime_max_s
        if asked is None:
            return most if most > 0 else None
        if asked <= 0 or (most > 0 and asked > most) or asked > 10**12:
            raise ApiError(400, f"{self._lifetime_hint()}; got {asked}", "expires_in_s")
        return asked

    async def _owner(self, caller: Account, name: str | None) -> Account:
        """Whose tokens: the caller's own, or (admins) the named account's."""
        if name is None or name == caller.name:
            return caller
        if caller.role != "admin":
            raise ApiError(403, "only an admin may manage another account's tokens; leave "
                                "out \"account\" to manage your own", "account", actor=caller)
        owner = await self.accounts.by_name(name[:QUERY_TEXT_CHARS_MAX])
        if owner is None:
            raise ApiError(404, f"no account named {name[:QUERY_TEXT_CHARS_MAX]!r}", "account")
        return owner


def _info(row: TokenRow, now_ms: int) -> TokenInfo:
    return TokenInfo(row.id, row.label, row.account_name, row.state(now_ms), row.created_ms,
                     row.expires_ms, row.revoked_ms)



def _text_param(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    if raw is not None and not 1 <= len(raw) <= QUERY_TEXT_CHARS_MAX:
        raise ApiError(400, f"{name} must have 1 to {QUERY_TEXT_CHARS_MAX} characters", name)
    return raw


__all__ = ["TOKEN_ROUTES", "TokenApi"]
