"""HTTP surface of the gateway: tus endpoints, upload status, probes, metrics.

Each handler reads as a checklist: authorise, find the upload in the
caller's tenant, validate, act, record, answer. Authorising is one call,
``await gateway.authorize(request, action)``: the credential is verified and
the action checked against the permission matrix (``streams.permissions``),
refusals audited (``streams.guard``). Errors are raised as ``streams.errors``
types and turned into responses in one place. The operator and admin
endpoints live in ``ingest_gateway.control``.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import Counter, Histogram, make_asgi_app
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from ingest_gateway import control, tus
from ingest_gateway.producer import ProducerPool, chunk_records, empty_final_chunk
from ingest_gateway.state import UploadStates
from streams.auth import Principal
from streams.config import Settings, get_settings
from streams.errors import (
    ChecksumMismatch,
    ClientError,
    Conflict,
    DependencyUnavailable,
    InvalidRequest,
    Locked,
    NotFound,
    PayloadTooLarge,
)
from streams.events import new_id, now_ms
from streams.guard import Guard, www_authenticate
from streams.logs import bound, describe_name, get_logger
from streams.names import InvalidFilename, validate_filename
from streams.permissions import Action

log = get_logger(__name__)

REQUESTS = Counter(
    "sluice_gateway_requests_total",
    "tus requests by method and status",
    ["method", "status"],
)
BYTES_ACKED = Counter(
    "sluice_gateway_bytes_acknowledged_total",
    "Upload bytes acknowledged to clients after being committed to Kafka",
)
COMMIT_SECONDS = Histogram(
    "sluice_gateway_commit_seconds", "Time to commit one PATCH to Kafka"
)


class Gateway:
    """Shared state of one gateway instance."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.states = UploadStates(settings)
        self.producers = ProducerPool(settings)
        self.guard = Guard.from_settings(settings)
        # One mutating request per upload at a time within this instance.
        self.busy: set[str] = set()

    async def authorize(self, request: Request, action: Action) -> Principal:
        """The caller, if their credential is valid and the matrix allows it."""
        return await self.guard.authorize(request, action)

    def upload_for(
        self, request: Request, principal: Principal, upload_id: str
    ) -> dict[str, Any]:
        """The caller's upload; another tenant's looks exactly like a missing one."""
        state = self.states.get(upload_id)
        if state is None:
            self.states.sync()
            state = self.states.get(upload_id)
        if state is not None and state["tenant"] != principal.tenant:
            # Audited in the owner's log, which the caller's auditors cannot
            # read: the caller learns nothing it could not from a 404.
            self.guard.audit_denial(
                request,
                principal,
                action="access.cross_tenant",
                target=upload_id,
                tenant=state["tenant"],
            )
            raise NotFound("upload not found", reason="not-found")
        if state is None:
            raise NotFound("upload not found", reason="not-found")
        if state["status"] == "TERMINATED":
            raise NotFound("upload was terminated", reason="terminated")
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

    # Validate everything before anything is written anywhere.
    length = tus.parse_length(request.headers.get("upload-length"), "Upload-Length")
    if length is None:
        raise InvalidRequest("Upload-Length is required", reason="length")
    if length > settings.max_upload_bytes:
        raise PayloadTooLarge("upload exceeds the size limit", reason="too-large")
    metadata = tus.parse_metadata(request.headers.get("upload-metadata"))
    raw_name = metadata.get("filename") or metadata.get("name")
    if not raw_name:
        raise InvalidRequest("metadata must carry a filename", reason="filename")
    try:
        filename = validate_filename(raw_name)
    except InvalidFilename as exc:
        raise InvalidRequest(str(exc), reason=f"filename-{exc.reason}") from exc
    metadata["filename"] = filename
    metadata.pop("name", None)

    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key:
        existing = gateway.states.find_by_idempotency_key(
            principal.tenant, idempotency_key
        )
        if existing is not None:
            return _created(request, existing)

    correlation_id = request.headers.get("x-correlation-id") or new_id()
    now = now_ms()
    state: dict[str, Any] = {
        "upload_id": new_id(),
        "tenant": principal.tenant,
        "owner": principal.subject,
        "status": "CREATED",
        "offset": 0,
        "length": length,
        "filename": filename,
        "metadata": metadata,
        "correlation_id": correlation_id,
        "created_at": now,
        "updated_at": now,
        "expires_at": None,
        "idempotency_key": idempotency_key,
    }
    chunks = None
    if length == 0:
        state["status"] = "COMPLETE"
        chunks = iter([empty_final_chunk(state)])

    with bound(
        upload_id=state["upload_id"],
        correlation_id=correlation_id,
        tenant=principal.tenant,
    ):
        await gateway.producers.commit(state, chunks)
        gateway.states.put(state)
        log.info("upload.created", length=length, **describe_name(filename))
    return _created(request, state)


def _created(request: Request, state: dict[str, Any]) -> Response:
    location = str(request.url_for("upload", upload_id=state["upload_id"]))
    return Response(
        status_code=201,
        headers=_tus_headers(
            {
                "Location": location,
                "Upload-Offset": str(state["offset"]),
                "X-Correlation-ID": state["correlation_id"],
            }
        ),
    )


async def head(request: Request) -> Response:
    gateway = _gateway(request)
    principal = await gateway.authorize(request, Action.UPLOAD_READ)
    _require_tus(request)
    state = gateway.upload_for(request, principal, request.path_params["upload_id"])

    headers = {
        "Upload-Offset": str(state["offset"]),
        "Upload-Metadata": tus.encode_metadata(state["metadata"]),
    }
    if state["length"] is not None:
        headers["Upload-Length"] = str(state["length"])
    return Response(status_code=200, headers=_tus_headers(headers))


async def patch(request: Request) -> Response:
    gateway = _gateway(request)
    settings = gateway.settings
    principal = await gateway.authorize(request, Action.UPLOAD_WRITE)
    _require_tus(request)
    upload_id = request.path_params["upload_id"]

    if request.headers.get("content-type") != tus.OFFSET_CONTENT_TYPE:
        raise _UnsupportedMedia()
    client_offset = tus.parse_length(
        request.headers.get("upload-offset"), "Upload-Offset"
    )
    if client_offset is None:
        raise InvalidRequest("Upload-Offset is required", reason="offset")
    checksum = tus.parse_checksum(request.headers.get("upload-checksum"))

    # Ownership before the lock: another tenant's upload is a 404, never a
    # 423, and a stranger's request must not lock the owner out.
    gateway.upload_for(request, principal, upload_id)
    if upload_id in gateway.busy:
        raise Locked("another request is writing this upload", reason="locked")
    gateway.busy.add(upload_id)
    try:
        state = gateway.upload_for(request, principal, upload_id)
        with bound(
            upload_id=upload_id,
            correlation_id=state["correlation_id"],
            tenant=state["tenant"],
        ):
            return await _append(
                request, gateway, settings, state, client_offset, checksum
            )
    finally:
        gateway.busy.discard(upload_id)


async def _append(
    request: Request,
    gateway: Gateway,
    settings: Settings,
    state: dict[str, Any],
    client_offset: int,
    checksum: tuple[tus.Hasher, bytes] | None,
) -> Response:
    if client_offset != state["offset"]:
        raise Conflict(
            f"offset {client_offset} does not match {state['offset']}",
            reason="offset-mismatch",
        )
    if state["status"] == "COMPLETE":
        raise Conflict("upload is already complete", reason="complete")
    remaining = state["length"] - state["offset"]

    # Spool the body (memory first, then disk) so a checksum can be verified
    # before a single byte reaches Kafka.
    received = 0
    interrupted = False
    with tempfile.SpooledTemporaryFile(max_size=2 * settings.chunk_bytes) as spool:
        try:
            async for piece in request.stream():
                received += len(piece)
                if received > remaining:
                    raise PayloadTooLarge(
                        "body exceeds Upload-Length", reason="exceeds-length"
                    )
                if checksum is not None:
                    checksum[0].update(piece)
                spool.write(piece)
        except ClientDisconnect:
            interrupted = True

        if checksum is not None:
            if interrupted:
                log.warning("chunk.interrupted_with_checksum", received=received)
                return Response(status_code=400, headers=_tus_headers())
            if checksum[0].digest() != checksum[1]:
                raise ChecksumMismatch("checksum mismatch", reason="checksum")
        if received == 0:
            return Response(
                status_code=204,
                headers=_tus_headers({"Upload-Offset": str(state["offset"])}),
            )

        new_state = dict(state)
        new_state["offset"] = state["offset"] + received
        new_state["status"] = (
            "COMPLETE" if new_state["offset"] == state["length"] else "RECEIVING"
        )
        new_state["updated_at"] = max(now_ms(), state["updated_at"] + 1)
        chunks = chunk_records(
            spool,
            state=state,
            start_offset=state["offset"],
            chunk_bytes=settings.chunk_bytes,
        )
        with COMMIT_SECONDS.time():
            await gateway.producers.commit(new_state, chunks)
    gateway.states.put(new_state)
    BYTES_ACKED.inc(received)
    log.info(
        "chunk.committed",
        offset=new_state["offset"],
        received=received,
        complete=new_state["status"] == "COMPLETE",
        interrupted=interrupted,
    )
    return Response(
        status_code=204,
        headers=_tus_headers({"Upload-Offset": str(new_state["offset"])}),
    )


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

    gateway.upload_for(request, principal, upload_id)  # ownership before the lock
    if upload_id in gateway.busy:
        raise Locked("another request is writing this upload", reason="locked")
    gateway.busy.add(upload_id)
    try:
        state = gateway.upload_for(request, principal, upload_id)
        new_state = dict(
            state,
            status="TERMINATED",
            updated_at=max(now_ms(), state["updated_at"] + 1),
        )
        await gateway.producers.commit(new_state)
        gateway.states.put(new_state)
        with bound(upload_id=upload_id, correlation_id=state["correlation_id"]):
            log.info("upload.terminated", offset=state["offset"])
    finally:
        gateway.busy.discard(upload_id)
    return Response(status_code=204, headers=_tus_headers())


async def upload_status(request: Request) -> Response:
    """Receipt state of an upload, for `sluice status` and clients."""
    gateway = _gateway(request)
    principal = await gateway.authorize(request, Action.UPLOAD_READ)
    state = gateway.upload_for(request, principal, request.path_params["upload_id"])
    return JSONResponse(
        {
            "upload_id": state["upload_id"],
            "tenant": state["tenant"],
            "status": state["status"],
            "offset": state["offset"],
            "length": state["length"],
            "filename": state["filename"],
            "correlation_id": state["correlation_id"],
        }
    )


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
    headers = _tus_headers()
    if exc.status == 401:
        headers["WWW-Authenticate"] = www_authenticate(exc.reason)
    return JSONResponse(
        {"error": exc.reason, "message": str(exc)},
        status_code=exc.status,
        headers=headers,
    )


async def _unavailable(request: Request, exc: Exception) -> Response:
    REQUESTS.labels(request.method, "503").inc()
    log.warning("request.unavailable", method=request.method, error=str(exc))
    return JSONResponse(
        {"error": "unavailable", "message": "a dependency is unavailable"},
        status_code=503,
        headers=_tus_headers({"Retry-After": "5"}),
    )


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(gateway.states.start)
        await gateway.producers.start()
        log.info("gateway.ready", instance=settings.gateway_instance)
        yield
        await gateway.producers.close()
        gateway.states.stop()
        gateway.guard.close()

    routes = [
        Route("/files", options, methods=["OPTIONS"]),
        Route("/files", create, methods=["POST"]),
        Route("/files/{upload_id}", options, methods=["OPTIONS"]),
        Route("/files/{upload_id}", head, methods=["HEAD"], name="upload"),
        Route("/files/{upload_id}", patch, methods=["PATCH"]),
        Route("/files/{upload_id}", terminate, methods=["DELETE"]),
        Route("/v1/uploads/{upload_id}", upload_status, methods=["GET"]),
        *control.routes(),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Mount("/metrics", app=make_asgi_app()),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=[],
                allow_methods=["POST", "HEAD", "PATCH", "DELETE", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=[h.strip() for h in tus.EXPOSED_HEADERS.split(",")],
            )
        ],
        exception_handlers={
            ClientError: _client_error,
            DependencyUnavailable: _unavailable,
        },
    )
    app.state.gateway = gateway
    return app
