"""``sluice warehouse serve``: owns the warehouse, loads it, answers queries.

On start it opens the backend (chdb, or the ClickHouse server named by
``SLUICE_CLICKHOUSE_URL``), applies the schema migrations and starts the
loaders; ``/healthz`` answers 503 when a loader thread has died.

Queries arrive over HTTP with the caller's bearer token (a JWT or a service
key). Only single SELECT statements run, restricted to the tables the
caller's roles grant and the rows of the tenants they reach (``scope``);
another tenant's upload is reported exactly like a missing one. Refused
credentials and permissions are audited (``streams.guard``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from streams.config import Settings, get_settings
from streams.errors import (
    ClientError,
    DataError,
    DependencyUnavailable,
    InvalidRequest,
    NotFound,
)
from streams.guard import Guard, www_authenticate
from streams.logs import get_logger
from streams.permissions import Action, PermissionDenied
from streams.warehouse.backend import Backend, open_backend, quote
from streams.warehouse.loader import Loader
from streams.warehouse.schema import DATABASE, migrate
from streams.warehouse.scope import grants_for, scoped_query

log = get_logger(__name__)

OUTPUT_FORMATS = {
    "json": "JSONEachRow",
    "csv": "CSVWithNames",
    "table": "PrettyCompactMonoBlock",
    "tsv": "TSVWithNames",
}


def _guard(request: Request) -> Guard:
    guard: Guard = request.app.state.guard
    return guard


async def query(request: Request) -> Response:
    # The tables the query reads decide the action it needs (scope), so
    # the matrix is asked below, once they are known.
    guard = _guard(request)
    principal = await guard.authenticate(request)
    try:
        body = await request.json()
    except ValueError as exc:
        raise InvalidRequest("body must be JSON", reason="body") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object", reason="body")
    fmt = OUTPUT_FORMATS.get(str(body.get("format", "json")).lower())
    if fmt is None:
        raise InvalidRequest("format must be json, csv, tsv or table", reason="format")

    backend: Backend = request.app.state.backend
    try:
        sql = await asyncio.to_thread(
            scoped_query, str(body.get("sql", "")), grants_for(principal), backend
        )
    except PermissionDenied as exc:
        raise guard.denied(request, principal, exc.action) from exc
    except InvalidRequest as exc:
        if exc.reason == "table":
            # Another tenant's dataset, or a table no role reads: refused
            # without looking it up, so the audit says nothing of existence.
            guard.audit_denial(
                request,
                principal,
                action="permission.denied",
                target="query.table",
                tenant=principal.tenant,
                detail={"reason": str(exc)},
            )
        raise
    try:
        text = await asyncio.to_thread(backend.query_text, sql, fmt)
    except DataError as exc:
        raise InvalidRequest(str(exc), reason="query") from exc
    return PlainTextResponse(text)


async def upload(request: Request) -> Response:
    principal = await _guard(request).authorize(request, Action.UPLOAD_READ)
    upload_id = request.path_params["upload_id"]
    backend: Backend = request.app.state.backend
    scope = f"tenant = {quote(principal.tenant)} AND upload_id = {quote(upload_id)}"
    results = await asyncio.to_thread(
        backend.query_json,
        f"SELECT * FROM {DATABASE}.file_results FINAL WHERE {scope}",
    )
    stages = await asyncio.to_thread(
        backend.query_json,
        f"SELECT stage, occurred_at FROM {DATABASE}.file_stages FINAL "
        f"WHERE {scope} ORDER BY occurred_at",
    )
    if not results and not stages:
        raise NotFound("upload not found", reason="not-found")
    result = results[0] if results else None
    return JSONResponse(
        {
            "upload_id": upload_id,
            "stage": "ROUTED" if result else stages[-1]["stage"],
            "stages": [s["stage"] for s in stages],
            "result": result,
        }
    )


async def healthz(request: Request) -> Response:
    loader: Loader = request.app.state.loader
    body = {
        "status": "ok" if loader.alive else "degraded",
        "backend": request.app.state.backend.kind,
        "schema_version": request.app.state.schema_version,
    }
    return JSONResponse(body, status_code=200 if loader.alive else 503)


async def _client_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClientError)
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = www_authenticate(exc.reason)
    return JSONResponse(
        {"error": exc.reason, "message": str(exc)},
        status_code=exc.status,
        headers=headers,
    )


async def _unavailable(request: Request, exc: Exception) -> Response:
    log.warning("request.unavailable", path=request.url.path, error=str(exc))
    return JSONResponse(
        {"error": "unavailable", "message": "a dependency is unavailable"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        backend = open_backend(settings)
        version = migrate(backend)
        loader = Loader(settings, backend)
        loader.start()
        app.state.backend = backend
        app.state.guard = Guard.from_settings(settings)
        app.state.loader = loader
        app.state.schema_version = version
        log.info("warehouse.ready", schema_version=version, backend=backend.kind)
        yield
        loader.stop()
        backend.close()
        app.state.guard.close()

    return Starlette(
        routes=[
            Route("/v1/query", query, methods=["POST"]),
            Route("/v1/uploads/{upload_id}", upload, methods=["GET"]),
            Route("/healthz", healthz),
            Mount("/metrics", app=make_asgi_app()),
        ],
        lifespan=lifespan,
        exception_handlers={
            ClientError: _client_error,
            DependencyUnavailable: _unavailable,
        },
    )
