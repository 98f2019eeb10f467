"""The Starlette application: wires the core, runtime, store and adapters in one lifespan."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from coordinator.accounts import Accounts
from coordinator.artifacts import TaskArtifacts
from coordinator.audit import AuditLog
from coordinator.config import Config
from coordinator.core import effects as fx
from coordinator.core.core import Core
from coordinator.dashboard import (
    DASHBOARD_ROUTES,
    Dashboard,
    SecurityHeaders,
    Static,
    demo_passwords,
)
from coordinator.demo import ensure_demo
from coordinator.http_api import ROUTES, TaskApi
from coordinator.http_auth import ApiError, error_response, json_response
from coordinator.http_tokens import TOKEN_ROUTES, TokenApi
from coordinator.http_wallet import WALLET_ROUTES, WalletApi
from coordinator.limits import RestLimits, RestRateLimit
from coordinator.live import Hub, LiveEndpoint
from coordinator.openapi import openapi_document
from coordinator.recorder import Journal
from coordinator.runtime import Outbox, Runtime, restore_core
from coordinator.sessionlog_writer import trim_session_logs
from coordinator.sessionlogs import SessionLogs
from coordinator.sessions import WorkerSessions
from coordinator.store.sqlite import SqliteStore

log = logging.getLogger("tn.coordinator")
EXPIRY_SWEEP_S = 1.0  # sockets whose token (or sign-in) expired are closed this often


class _Outbox(Outbox):
    def __init__(self) -> None:
        self.sessions: WorkerSessions | None = None
        self.hub: Hub | None = None

    def dispatch(self, effect: fx.Effect) -> None:
        assert self.sessions is not None and self.hub is not None
        match effect:
            case fx.Send():
                self.sessions.send(effect.session_id, effect.message)
            case fx.AssignChunk():
                self.sessions.assign(effect)
            case fx.CloseSession():
                self.sessions.close(effect.session_id, effect.code, effect.reason)
            case fx.TaskChanged():
                self.hub.mark(effect.task_id)
            case _:
                raise AssertionError(f"no adapter for {effect!r}")


class Artifacts:
    """Open task artifacts by id, keeping the chunk files mapped while in use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: dict[str, TaskArtifacts] = {}

    def __call__(self, task_id: str) -> TaskArtifacts:
        arts = self._open.get(task_id)
        if arts is None:
            arts = self._open[task_id] = TaskArtifacts(self.root / task_id)
        return arts

    def sweep(self, known: set[str]) -> None:
        """Remove the files of tasks whose creation never committed (a crash mid-upload)."""
        if self.root.is_dir():
            for path in self.root.iterdir():
                if path.is_dir() and not path.name.startswith(".") and path.name not in known:
                    shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        for arts in self._open.values():
            arts.close()


def create_app(config: Config) -> Starlette:
    outbox = _Outbox()
    artifacts = Artifacts(config.data_dir / "tasks")
    holder: dict[str, object] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = await SqliteStore.open(config.db_path)
        accounts = Accounts(store, AuditLog(store, config))
        epoch = await store.next_epoch()
        core = await restore_core(Core(config.core, epoch), store, int(time.time() * 1000))
        artifacts.sweep(set(core.tasks))
        journal = None
        if config.journal_enabled:
            journal = Journal(config.data_dir / "journal", config.journal_segment_bytes,
                              config.journal_bytes_max, config.journal_flush_ms)
            journal.open_segment(core, int(time.time() * 1000))
        runtime = Runtime(core, store, outbox, tick_ms=config.tick_ms,
                          batch_max=config.commit_batch_max, journal=journal)
        session_logs = None
        if config.session_logs_enabled:
            trim_session_logs(config.data_dir / "sessions", config.session_logs_bytes_max)
            session_logs = SessionLogs(config.data_dir / "sessions",
                                       config.session_log_payload_bytes_max,
                                       config.session_logs_bytes_max,
                                       config.session_log_buffer_bytes_max,
                                       runtime.clock.now_ms)
        hub = Hub(core, config)
        sessions = WorkerSessions(config, accounts, runtime, artifacts, epoch, session_logs)
        outbox.sessions, outbox.hub = sessions, hub
        api = TaskApi(config, core, runtime, store, accounts, artifacts)
        wallet = WalletApi(config, core, runtime, store, accounts)
        live = LiveEndpoint(hub, accounts, config, session_logs, epoch)
        holder.update(api=api, wallet=wallet, live=live, sessions=sessions)
        rest_limits.accounts = accounts

        async def close_revoked(token_hash: str) -> None:
            closed = sessions.close_token(token_hash) + live.close_token(token_hash)
            if closed:
                log.info("token revoked: closing %d session(s) it opened", closed)

        accounts.on_revoked = close_revoked

        async def close_expired() -> None:
            while True:
                await anyio.sleep(EXPIRY_SWEEP_S)
                now_ms = int(time.time() * 1000)
                closed = sessions.close_expired(now_ms) + live.close_expired(now_ms)
                if closed:
                    log.info("closing %d session(s) whose token or sign-in expired", closed)

        await accounts.ensure_auth_tables()
        holder["dashboard"] = Dashboard(config, core, accounts, hub)  # the browser's routes
        holder["tokens"] = TokenApi(config, accounts)  # API tokens and the audit log
        if config.demo:
            await ensure_demo(accounts, config.data_dir / "demo.json")
            await demo_passwords(accounts)
        log.info("coordinator ready: epoch %d, %d tasks restored", epoch, len(core.tasks))
        try:
            async with anyio.create_task_group() as tg:
                runtime.start(tg)
                tg.start_soon(hub.flusher)
                tg.start_soon(close_expired)
                if session_logs is not None:
                    tg.start_soon(session_logs.run)
                await wallet.grant_initial_all()  # sandbox starting credit, once per account
                accounts.on_created = wallet.on_account_created
                app.state.ready = True
                yield
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                artifacts.close()
                if journal is not None:
                    journal.close()
                if session_logs is not None:
                    await session_logs.aclose()
                await store.close()

    async def worker_ws(ws: WebSocket) -> None:
        sessions = holder["sessions"]
        assert isinstance(sessions, WorkerSessions)
        await sessions.endpoint(ws)

    async def live_ws(ws: WebSocket) -> None:
        live = holder["live"]
        assert isinstance(live, LiveEndpoint)
        await live(ws)

    def api_route(name: str, owner: str = "api") -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            api = holder[owner]
            assert isinstance(api, TaskApi | WalletApi | Dashboard | TokenApi)
            method: Callable[[Request], Awaitable[Response]] = getattr(api, name)
            return await method(request)
        return handler

    async def openapi(request: Request) -> Response:
        return json_response(openapi_document())

    routes: list[Route | WebSocketRoute] = [
        Route(path, api_route(name), methods=[method]) for path, method, name in ROUTES
    ]
    routes += [
        Route(path, api_route(name, "wallet"), methods=[method])
        for path, method, name in WALLET_ROUTES
    ]
    routes += [
        Route(path, api_route(name, "tokens"), methods=[method])
        for path, method, name in TOKEN_ROUTES
    ]
    # the dashboard: its files and its sign-in routes (coordinator/dashboard.py)
    static = Static()
    rest_limits = RestLimits(config, exempt=static.paths())  # the dashboard's files: free
    routes += [Route(path, static.serve, methods=["GET"]) for path in static.paths()]
    routes += [
        Route(path, api_route(name, "dashboard"), methods=[method])
        for path, method, name in DASHBOARD_ROUTES
    ]
    routes += [
        Route("/openapi.json", openapi, methods=["GET"]),
        WebSocketRoute("/ws/worker", worker_ws),
        WebSocketRoute("/ws/live", live_ws),
    ]

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        tokens = holder.get("tokens")
        if exc.status == 403 and isinstance(tokens, TokenApi):  # refused: audited
            await tokens.accounts.audit.record(
                "access.forbidden", exc.actor, request, ok=False,
                target=f"{request.method} {request.url.path}", detail={"error": exc.error})
        return error_response(exc.status, exc.error, exc.field)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: "no such route; see /openapi.json",
                   405: "method not allowed on this route; see /openapi.json"}.get(
            exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message)

    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(SecurityHeaders), Middleware(RestRateLimit, limits=rest_limits)],
        exception_handlers={ApiError: api_error, HTTPException: http_error},
    )
