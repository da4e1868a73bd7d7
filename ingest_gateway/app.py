"""HTTP surface of the gateway: tus endpoints, upload status, probes, metrics.

Each handler reads as a checklist: authorise, find the upload in the
caller's tenant, validate, act, record, answer. Authorising is one call,
``await gateway.authorize(request, action)``: the credential is verified and
the action checked against the permission matrix (``streams.permissions``),
refusals audited (``streams.guard``). Errors are raised as ``streams.errors``
types and turned into responses in one place. The operator and admin
endpoints live in ``ingest_gateway.control``; the work behind the tus
checklists beside this module: ``creation``, ``append`` (PATCH bodies),
``concat``, ``session`` (one writer per upload), ``expiry``, ``progress``
(SSE and WebSocket), ``limits`` and ``http`` (headers, CORS, OpenAPI).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import Counter, Histogram, make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute

from ingest_gateway import concat, control, creation, expiry, http, progress, tus
from ingest_gateway.append import BodyWriter
from ingest_gateway.concat import PartialTopic
from ingest_gateway.errors import BodyTimeout, Gone, ShuttingDown
from ingest_gateway.limits import Budget, TenantRates, tenant_limit
from ingest_gateway.memory import MemoryKeeper
from ingest_gateway.producer import UploadWriters, final_marker
from ingest_gateway.session import Exclusive, Writers, acquire
from ingest_gateway.state import UploadStates
from streams.auth import Principal
from streams.config import Settings, get_settings
from streams.errors import (
    ClientError,
    Conflict,
    DependencyUnavailable,
    InvalidRequest,
    NotFound,
)
from streams.events import new_id
from streams.guard import Guard, www_authenticate
from streams.logs import bound, describe_name, get_logger
from streams.permissions import Action
from streams.topics import CHUNKS

log = get_logger(__name__)

THREADS = 64

REQUESTS = Counter(
    "sluice_gateway_requests_total",
    "tus requests by method and status",
    ["method", "status"],
)
BYTES_ACKED = Counter(
    "sluice_gateway_bytes_acknowledged_total",
    "Upload bytes acknowledged to clients after being committed to Kafka",
)
PATCH_SECONDS = Histogram(
    "sluice_gateway_patch_seconds", "Time to receive and commit one PATCH"
)


class Gateway:
    """Shared state of one gateway instance."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.states = UploadStates(settings)
        self.guard = Guard.from_settings(settings)
        self.boot = new_id()[:12]
        self.writers = Writers(
            states=self.states,
            writers=UploadWriters(settings),
            instance=settings.gateway_instance,
            boot=self.boot,
            lease_s=settings.gateway_lease_s,
        )
        # One mutating request per upload at a time within this instance;
        # across instances, the upload's lease (ingest_gateway.session).
        self.busy = self.writers.busy
        self.partials = PartialTopic(settings)
        # A body holds three batches: the one being read, the one
        # committing, and the producer's copy of it.
        self.budget = Budget(
            settings.gateway_max_inflight_bytes,
            settings.gateway_max_rss_bytes,
            smallest=3 * settings.chunk_bytes,
            largest=3 * settings.gateway_batch_bytes,
        )
        self.rates = TenantRates(
            settings.gateway_tenant_rate_per_s, settings.gateway_tenant_burst
        )
        self.progress = progress.ProgressHub(settings)
        self.states.listeners.append(self.progress.received)
        # Set once the shutdown grace period is over: bodies still arriving
        # are then ended, keeping what arrived (see stopping).
        self.cut_off = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    def stopping(self) -> None:
        """The server was told to stop: cut bodies off after the grace period.

        Called from the signal handler; the server stops taking connections
        and waits for those it has, which the cut-off lets answer (503) with
        their bytes committed rather than be cancelled with them buffered.
        """
        loop = self.loop
        if loop is None or self.cut_off.is_set():
            return
        grace_s = self.settings.gateway_shutdown_grace_s
        log.info("gateway.stopping", grace_s=grace_s, requests=len(self.busy))
        loop.call_soon_threadsafe(loop.call_later, grace_s, self.cut_off.set)

    async def authorize(self, request: Request, action: Action) -> Principal:
        """The caller, if their credential is valid and the matrix allows it."""
        return await self.guard.authorize(request, action)

    async def find_upload(
        self, request: Request, principal: Principal, upload_id: str
    ) -> dict[str, Any]:
        """The caller's upload; another tenant's looks exactly like a missing one."""
        state = self.states.get(upload_id)
        if state is None:
            return await self.exact_upload(request, principal, upload_id)
        return self.owned(request, principal, upload_id, state)

    async def exact_upload(
        self, request: Request, principal: Principal, upload_id: str
    ) -> dict[str, Any]:
        """The caller's upload as committed in Kafka at this moment."""
        await asyncio.to_thread(self.states.sync_upload, upload_id)
        return self.owned(request, principal, upload_id, self.states.get(upload_id))

    def owned(
        self,
        request: Request,
        principal: Principal,
        upload_id: str,
        state: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """visible(), with another tenant's attempt audited in the owner's log."""
        if state is not None and state["tenant"] != principal.tenant:
            # The owner's auditors see it; the caller learns nothing a 404
            # would not tell.
            self.guard.audit_denial(
                request,
                principal,
                action="access.cross_tenant",
                target=upload_id,
                tenant=state["tenant"],
            )
        return visible(principal, state)


def visible(principal: Principal, state: dict[str, Any] | None) -> dict[str, Any]:
    """state if the caller may see it: 404 for missing or foreign, 410 expired."""
    if state is None or state["tenant"] != principal.tenant:
        raise NotFound("upload not found", reason="not-found")
    if state["status"] == "TERMINATED":
        raise NotFound("upload was terminated", reason="terminated")
    if expiry.is_expired(state):
        raise Gone("upload has expired", reason="expired")
    return state


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _tus_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {"Tus-Resumable": tus.TUS_VERSION, "Cache-Control": "no-store"}
    headers.update(extra or {})
    return headers


def _require_tus(request: Request) -> None:
    version = request.headers.get("tus-resumable")
    if version != tus.TUS_VERSION:
        raise _VersionMismatch()


class _VersionMismatch(ClientError):
    status = 412

    def __init__(self) -> None:
        super().__init__("Tus-Resumable must be 1.0.0", reason="tus-version")


class _NotPatchable(ClientError):
    status = 403

    def __init__(self) -> None:
        super().__init__("a final upload cannot be patched", reason="final-upload")


async def options(request: Request) -> Response:
    settings = _gateway(request).settings
    return Response(
        status_code=204,
        headers=_tus_headers(
            {
                "Tus-Version": tus.TUS_VERSION,
                "Tus-Extension": ",".join(tus.EXTENSIONS),
                "Tus-Max-Size": str(settings.max_upload_bytes),
                "Tus-Checksum-Algorithm": ",".join(tus.CHECKSUM_ALGORITHMS),
            }
        ),
    )


async def create(request: Request) -> Response:
    gateway = _gateway(request)
    settings = gateway.settings
    principal = await gateway.authorize(request, Action.UPLOAD_CREATE)
    _require_tus(request)
    gateway.rates.take(principal.tenant)

    # Validate everything before anything is written anywhere.
    asked = creation.parse(request, settings, principal)
    checksum = tus.parse_checksum(request.headers.get("upload-checksum"))
    parts = []
    if asked.concat == "FINAL":
        # Parts may have finished on another instance a moment ago.
        for part_id in asked.parts:
            await asyncio.to_thread(gateway.states.sync_upload, part_id)
        parts = creation.resolve_parts(
            asked,
            principal,
            {p: gateway.states.get(p) for p in asked.parts},
        )
    upload_id = creation.upload_id_for(principal, asked)
    state = creation.new_state(upload_id, asked, principal, settings, parts)
    if asked.concat == "PARTIAL":
        state["replay_from"] = await asyncio.to_thread(
            gateway.partials.start_of, upload_id
        )

    replayed: list[bool] = []

    def check(current: dict[str, Any] | None) -> dict[str, Any]:
        if current is None:
            return state
        if current["tenant"] != principal.tenant:  # a derived id never collides
            raise Conflict("upload id taken", reason="conflict")
        creation.check_replay(current, asked)
        replayed.append(True)
        return current

    with bound(
        upload_id=upload_id,
        correlation_id=asked.correlation_id,
        tenant=principal.tenant,
    ):
        exclusive = await acquire(gateway.writers, upload_id, new_id(), check)
        try:
            final = await _fill(
                request, gateway, exclusive, asked, parts, replayed, checksum
            )
        except (ClientError, DependencyUnavailable) as exc:
            # The upload exists now: a body cut short (408, 460, 503, 413) is
            # resumed from HEAD, which the client can only do knowing where.
            location = str(request.url_for("upload", upload_id=upload_id))
            exc.upload_location = location
            raise
        finally:
            await exclusive.release()
        if not replayed:
            log.info(
                "upload.created",
                length=final["length"],
                concat=final["concat"],
                **describe_name(final["filename"]),
            )
    return _created(request, final)


async def _fill(
    request: Request,
    gateway: Gateway,
    exclusive: Exclusive,
    asked: creation.Creation,
    parts: list[dict[str, Any]],
    replayed: list[bool],
    checksum: tuple[tus.Hasher, bytes] | None,
) -> dict[str, Any]:
    """After the lease: the body, the parts' copy or the empty file's marker."""
    settings = gateway.settings
    state = exclusive.state
    if state["status"] == "COMPLETE":
        if not replayed and state["concat"] != "PARTIAL":
            marker = final_marker(state, 0)
            return await exclusive.commit(
                state, lambda: [marker], settings.topic(CHUNKS), release=True
            )
        return state
    if state["concat"] == "FINAL":
        if not parts:
            parts = [p for p in map(gateway.states.get, state["parts"]) if p]
        return await concat.copy_parts(exclusive, parts, gateway.partials, settings)
    if asked.has_body and not replayed:
        writer = BodyWriter(
            exclusive,
            settings,
            gateway.budget,
            tenant_limit(settings, state["tenant"]),
            gateway.cut_off,
        )
        final = await writer.write(request, checksum, None)
        BYTES_ACKED.inc(final["offset"])
        return final
    return state


def _created(request: Request, state: dict[str, Any]) -> Response:
    location = str(request.url_for("upload", upload_id=state["upload_id"]))
    headers = {
        "Location": location,
        "Upload-Offset": str(state["offset"]),
        "X-Correlation-ID": state["correlation_id"],
    }
    if state.get("expires_at"):
        headers["Upload-Expires"] = tus.http_date(state["expires_at"])
    return Response(status_code=201, headers=_tus_headers(headers))


async def head(request: Request) -> Response:
    gateway = _gateway(request)
    principal = await gateway.authorize(request, Action.UPLOAD_READ)
    _require_tus(request)
    upload_id = request.path_params["upload_id"]
    state = await gateway.exact_upload(request, principal, upload_id)

    headers = {"Upload-Metadata": tus.encode_metadata(state["metadata"])}
    unfinished_final = state["concat"] == "FINAL" and state["status"] != "COMPLETE"
    if not unfinished_final:
        headers["Upload-Offset"] = str(state["offset"])
    if state["length"] is not None:
        headers["Upload-Length"] = str(state["length"])
    else:
        headers["Upload-Defer-Length"] = "1"
    if state.get("expires_at"):
        headers["Upload-Expires"] = tus.http_date(state["expires_at"])
    if state["concat"] == "PARTIAL":
        headers["Upload-Concat"] = "partial"
    elif state["concat"] == "FINAL":
        base = str(request.url_for("upload", upload_id="x"))[:-1]
        headers["Upload-Concat"] = "final;" + " ".join(base + p for p in state["parts"])
    return Response(status_code=200, headers=_tus_headers(headers))


async def patch(request: Request) -> Response:
    gateway = _gateway(request)
    settings = gateway.settings
    principal = await gateway.authorize(request, Action.UPLOAD_WRITE)
    _require_tus(request)
    upload_id = request.path_params["upload_id"]
    gateway.rates.take(principal.tenant)

    if request.headers.get("content-type") != tus.OFFSET_CONTENT_TYPE:
        raise _UnsupportedMedia()
    client_offset = tus.parse_length(
        request.headers.get("upload-offset"), "Upload-Offset"
    )
    if client_offset is None:
        raise InvalidRequest("Upload-Offset is required", reason="offset")
    declared = tus.parse_length(request.headers.get("upload-length"), "Upload-Length")
    checksum = tus.parse_checksum(request.headers.get("upload-checksum"))
    # Ownership before the lock: another tenant's upload is a 404, never a
    # 423, and a stranger's request must not lock the owner out.
    state = await gateway.find_upload(request, principal, upload_id)
    if state["concat"] == "FINAL":
        raise _NotPatchable()

    def check(current: dict[str, Any] | None) -> dict[str, Any]:
        return visible(principal, current)

    with (
        bound(
            upload_id=upload_id,
            correlation_id=state["correlation_id"],
            tenant=state["tenant"],
        ),
        PATCH_SECONDS.time(),
    ):
        exclusive = await acquire(gateway.writers, upload_id, new_id(), check)
        try:
            # The lease makes this the exact offset: nobody else can move it.
            if client_offset != exclusive.state["offset"]:
                raise Conflict(
                    f"offset {client_offset} does not match "
                    f"{exclusive.state['offset']}",
                    reason="offset-mismatch",
                )
            before = exclusive.state["offset"]
            writer = BodyWriter(
                exclusive,
                settings,
                gateway.budget,
                tenant_limit(settings, state["tenant"]),
                gateway.cut_off,
            )
            final = await writer.write(request, checksum, declared)
        finally:
            await exclusive.release()
    BYTES_ACKED.inc(final["offset"] - before)

    headers = {"Upload-Offset": str(final["offset"])}
    if final.get("expires_at"):
        headers["Upload-Expires"] = tus.http_date(final["expires_at"])
    return Response(status_code=204, headers=_tus_headers(headers))


class _UnsupportedMedia(ClientError):
    status = 415

    def __init__(self) -> None:
        super().__init__(
            f"Content-Type must be {tus.OFFSET_CONTENT_TYPE}", reason="content-type"
        )


async def terminate(request: Request) -> Response:
    gateway = _gateway(request)
    principal = await gateway.authorize(request, Action.UPLOAD_TERMINATE)
    _require_tus(request)
    upload_id = request.path_params["upload_id"]

    await gateway.find_upload(request, principal, upload_id)  # ownership first

    def check(current: dict[str, Any] | None) -> dict[str, Any]:
        return visible(principal, current)

    exclusive = await acquire(gateway.writers, upload_id, new_id(), check)
    try:
        state = exclusive.state
        await exclusive.commit(
            dict(state, status="TERMINATED", expires_at=None), release=True
        )
    finally:
        await exclusive.release()
    with bound(upload_id=upload_id, correlation_id=state["correlation_id"]):
        log.info("upload.terminated", offset=state["offset"])
    return Response(status_code=204, headers=_tus_headers())


async def upload_status(request: Request) -> Response:
    """Receipt state of an upload, for `sluice status` and clients."""
    gateway = _gateway(request)
    principal = await gateway.authorize(request, Action.UPLOAD_READ)
    upload_id = request.path_params["upload_id"]
    state = await gateway.exact_upload(request, principal, upload_id)
    return JSONResponse(
        {
            "upload_id": state["upload_id"],
            "tenant": state["tenant"],
            "status": state["status"],
            "offset": state["offset"],
            "length": state["length"],
            "filename": state["filename"],
            "correlation_id": state["correlation_id"],
            "concat": state["concat"],
            "source": state["source"],
            "expires_at": state.get("expires_at"),
        }
    )


async def upload_events(request: Request) -> Response:
    """Stage changes of an upload as Server-Sent Events."""
    gateway = _gateway(request)
    principal = await gateway.authorize(request, Action.UPLOAD_READ)
    upload_id = request.path_params["upload_id"]
    state = gateway.progress.authorise(principal, upload_id, gateway.states)
    return progress.sse_response(gateway.progress, state)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    gateway = _gateway(request)
    try:
        await asyncio.to_thread(gateway.states.sync, 2.0)
    except DependencyUnavailable as exc:
        return JSONResponse({"status": "unavailable", "error": str(exc)}, 503)
    return JSONResponse({"status": "ready"})


async def _client_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClientError)
    REQUESTS.labels(request.method, str(exc.status)).inc()
    log.info(
        "request.refused", method=request.method, status=exc.status, reason=exc.reason
    )
    headers = _tus_headers(_upload_location(exc))
    if exc.status == 401:
        headers["WWW-Authenticate"] = www_authenticate(exc.reason)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if isinstance(exc, BodyTimeout):
        # The rest of the body may still trickle in: do not read it as the
        # connection's next request.
        headers["Connection"] = "close"
    return JSONResponse(
        {"error": exc.reason, "message": str(exc)},
        status_code=exc.status,
        headers=headers,
    )


async def _unavailable(request: Request, exc: Exception) -> Response:
    REQUESTS.labels(request.method, "503").inc()
    log.warning("request.unavailable", method=request.method, error=str(exc))
    retry_after = getattr(exc, "retry_after", 5)
    headers = _tus_headers({**_upload_location(exc), "Retry-After": str(retry_after)})
    if isinstance(exc, ShuttingDown):
        headers["Connection"] = "close"  # the rest of the body is not read
    return JSONResponse(
        {"error": "unavailable", "message": str(exc) or "a dependency is unavailable"},
        status_code=503,
        headers=headers,
    )


def _upload_location(exc: Exception) -> dict[str, str]:
    """Location of the upload a failed creation-with-upload did create."""
    location = getattr(exc, "upload_location", None)
    return {"Location": location} if location else {}


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()
    # Before Gateway starts Kafka clients and their threads.
    memory = MemoryKeeper()
    memory.start()
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Kafka calls block in threads: enough of them for every request
        # that may be committing at once.
        loop = gateway.loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(THREADS, "gateway"))
        await asyncio.to_thread(gateway.states.start)
        await asyncio.to_thread(gateway.progress.start, loop)
        tasks = [
            asyncio.create_task(expiry.recover(gateway.writers)),
            asyncio.create_task(expiry.sweep_forever(gateway.writers, settings)),
        ]
        log.info("gateway.ready", instance=settings.gateway_instance, boot=gateway.boot)
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        gateway.progress.stop()
        await gateway.writers.writers.close()
        gateway.partials.close()
        gateway.states.stop()
        gateway.guard.close()
        memory.stop()

    routes = [
        Route("/files", options, methods=["OPTIONS"]),
        Route("/files", create, methods=["POST"]),
        Route("/files/{upload_id}", options, methods=["OPTIONS"]),
        Route("/files/{upload_id}", head, methods=["HEAD"], name="upload"),
        Route("/files/{upload_id}", patch, methods=["PATCH"]),
        Route("/files/{upload_id}", terminate, methods=["DELETE"]),
        Route("/v1/uploads/{upload_id}", upload_status, methods=["GET"]),
        Route("/v1/uploads/{upload_id}/events", upload_events, methods=["GET"]),
        WebSocketRoute("/v1/uploads/{upload_id}/ws", progress.websocket_endpoint),
        *control.routes(),
        Route("/openapi.json", http.openapi, methods=["GET"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Mount("/metrics", app=make_asgi_app()),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=http.middleware(settings),
        exception_handlers={
            ClientError: _client_error,
            DependencyUnavailable: _unavailable,
        },
    )
    app.state.gateway = gateway
    return app
