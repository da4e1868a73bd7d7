"""Operator and admin endpoints of the gateway, behind the permission matrix.

``sluice dlq``, ``sluice quarantine``, ``sluice staging``, ``sluice health``,
``sluice keys`` and ``sluice tenants`` are thin clients of these endpoints,
so the check that an operator or admin may act is made here, on the server,
with the same verifier and matrix as the tus endpoints, and the CLI needs
no Kafka or storage credentials of its own.

==========  ==========================================  ==================
method      path                                        action
==========  ==========================================  ==================
GET         /v1/ops/dead-letters                        deadletters.read
GET         /v1/ops/dead-letters/{event_id}             deadletters.read
POST        /v1/ops/dead-letters/replay                 deadletters.replay
GET         /v1/ops/quarantine                          quarantine.read
POST        /v1/ops/quarantine/{tenant}/{id}/release    quarantine.release
DELETE      /v1/ops/quarantine/{tenant}/{id}            quarantine.delete
POST        /v1/ops/staging/sweep                       staging.sweep
GET         /v1/ops/health                              health.read
GET         /v1/admin/tenants                           tenants.read
GET         /v1/admin/keys                              keys.read
POST        /v1/admin/keys                              keys.create
POST        /v1/admin/keys/{key_id}/revoke              keys.revoke
POST        /v1/admin/keys/{key_id}/rotate              keys.rotate
==========  ==========================================  ==================

Every privileged action (replay, release, delete, sweep, key create, revoke
and rotate) is audited in the log of the tenant it touched. Answers that hold a
new API key are marked ``Cache-Control: no-store``; the key itself is never
logged or audited.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import asdict
from functools import cached_property
from typing import TYPE_CHECKING, Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from streams import quarantine, topics
from streams.auth import PLATFORM_TENANT, Principal, check_tenant
from streams.clamd import Clamd
from streams.dlq import list_dead_letters, replay_dead_letters, show_dead_letters
from streams.errors import InvalidRequest, NotFound, SluiceError
from streams.guard import correlation_id_of
from streams.permissions import Action
from streams.publish import Publisher
from streams.service_keys import (
    DEFAULT_GRACE_S,
    DEFAULT_TTL_S,
    IssuedKey,
    ServiceKey,
    ServiceKeyStore,
    UnknownServiceKey,
)
from streams.storage import ObjectStore

if TYPE_CHECKING:
    from ingest_gateway.app import Gateway

NO_STORE = {"Cache-Control": "no-store"}
_UPLOAD_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
HEALTH_TIMEOUT_S = 2.0


class _Resources:
    """What the control endpoints need beyond the gateway, made on first use."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @cached_property
    def store(self) -> ObjectStore:
        return ObjectStore(self.gateway.settings.storage_root)

    @cached_property
    def publisher(self) -> Publisher:
        return Publisher(self.gateway.settings)

    def publish_result(self, result: dict[str, Any]) -> None:
        """Send a restated FileResult and wait for Kafka's acknowledgement."""
        self.publisher.send(
            topics.RESULTS,
            result["upload_id"],
            "FileResult",
            result,
            correlation_id=result.get("correlation_id", ""),
        )
        self.publisher.flush()

    @property
    def keys(self) -> ServiceKeyStore:
        keys = self.gateway.guard.keys
        if keys is None:
            raise NotFound("service keys are not enabled", reason="not-found")
        return keys


def _context(request: Request) -> tuple[Gateway, _Resources]:
    gateway: Gateway = request.app.state.gateway
    resources = getattr(request.app.state, "control", None)
    if resources is None:
        resources = _Resources(gateway)
        request.app.state.control = resources
    return gateway, resources


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise InvalidRequest("body must be JSON", reason="body") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object", reason="body")
    return body


def _int(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"{name} must be an integer", reason=name)
    return value


# --- Dead letters -------------------------------------------------------------


async def dead_letters(request: Request) -> Response:
    gateway, _ = _context(request)
    await gateway.authorize(request, Action.DEADLETTERS_READ)

    letters = await asyncio.to_thread(list_dead_letters, gateway.settings)
    return JSONResponse({"dead_letters": letters})


async def dead_letter(request: Request) -> Response:
    gateway, _ = _context(request)
    await gateway.authorize(request, Action.DEADLETTERS_READ)
    event_id = request.path_params["event_id"]

    shown = await asyncio.to_thread(show_dead_letters, gateway.settings, [event_id])
    if not shown:
        raise NotFound("no such dead letter", reason="not-found")
    return JSONResponse({"dead_letter": shown[0]})


async def replay(request: Request) -> Response:
    gateway, _ = _context(request)
    principal = await gateway.authorize(request, Action.DEADLETTERS_REPLAY)
    body = await _body(request)
    ids = body.get("ids") or []
    category = body.get("category")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InvalidRequest("ids must be a list of dead-letter ids", reason="ids")
    if category is not None and not isinstance(category, str):
        raise InvalidRequest("category must be a string", reason="category")

    # Each replayed letter is audited inside replay_dead_letters.
    replayed = await asyncio.to_thread(
        replay_dead_letters,
        gateway.settings,
        actor=principal.subject,
        actor_tenant=principal.tenant,
        ids=ids,
        category=category,
        request_correlation_id=correlation_id_of(request),
    )
    return JSONResponse({"replayed": replayed})


# --- Quarantine ---------------------------------------------------------------


def _quarantine_target(request: Request) -> tuple[str, str]:
    """The tenant and upload id of the path; malformed ones name nothing."""
    tenant = request.path_params["tenant"]
    upload_id = request.path_params["upload_id"]
    try:
        check_tenant(tenant)
    except ValueError as exc:
        raise NotFound("no such quarantined upload", reason="not-found") from exc
    if not _UPLOAD_ID_RE.fullmatch(upload_id):
        raise NotFound("no such quarantined upload", reason="not-found")
    return tenant, upload_id


async def quarantined(request: Request) -> Response:
    gateway, resources = _context(request)
    await gateway.authorize(request, Action.QUARANTINE_READ)
    tenant = request.query_params.get("tenant") or None
    if tenant is not None:
        try:
            check_tenant(tenant)
        except ValueError as exc:
            raise InvalidRequest(str(exc), reason="tenant") from exc

    entries = await asyncio.to_thread(quarantine.entries, resources.store, tenant)
    return JSONResponse({"quarantined": [asdict(e) for e in entries]})


async def release(request: Request) -> Response:
    return await _act_on_quarantined(request, Action.QUARANTINE_RELEASE)


async def delete_quarantined(request: Request) -> Response:
    return await _act_on_quarantined(request, Action.QUARANTINE_DELETE)


async def _act_on_quarantined(request: Request, action: Action) -> Response:
    """Release or delete one quarantined upload, restate its result, audit."""
    gateway, resources = _context(request)
    principal = await gateway.authorize(request, action)
    tenant, upload_id = _quarantine_target(request)
    releasing = action is Action.QUARANTINE_RELEASE
    audit_action = "quarantine.released" if releasing else "quarantine.deleted"

    def act() -> dict[str, Any]:
        if releasing:
            key = quarantine.load_key(gateway.settings)
            return quarantine.release(
                resources.store, tenant, upload_id, key, principal.subject
            )
        return quarantine.delete(resources.store, tenant, upload_id, principal.subject)

    try:
        result = await asyncio.to_thread(act)
    except NotFound:
        await gateway.guard.record(
            request,
            principal,
            action=audit_action,
            tenant=tenant,
            target=upload_id,
            outcome="not-found",
        )
        raise

    # The restated result replaces the upload's row in the warehouse.
    await asyncio.to_thread(resources.publish_result, result)
    await gateway.guard.record(
        request,
        principal,
        action=audit_action,
        tenant=tenant,
        target=upload_id,
        detail={"location": result["location"], "sha256": result["sha256"]},
    )
    return JSONResponse({"result": result})


# --- Staging ------------------------------------------------------------------


async def sweep_staging(request: Request) -> Response:
    gateway, resources = _context(request)
    principal = await gateway.authorize(request, Action.STAGING_SWEEP)
    body = await _body(request)
    older_than = body.get("older_than_s", gateway.settings.upload_expiry_s)
    if not isinstance(older_than, int | float) or isinstance(older_than, bool):
        raise InvalidRequest("older_than_s must be a number", reason="older_than_s")

    # Imported here: the cleanup agent's module brings Faust, which the
    # gateway needs for this endpoint only.
    from agents.cleanup import sweep

    expired = await asyncio.to_thread(sweep, resources.store, float(older_than))

    for item in expired:
        await gateway.guard.record(
            request,
            principal,
            action="upload.expired",
            tenant=item.tenant,
            target=item.upload_id,
            outcome="deleted",
            detail={"idle_s": int(item.idle_s)},
        )
    await gateway.guard.record(
        request,
        principal,
        action="staging.swept",
        tenant=PLATFORM_TENANT,
        target="staging",
        detail={"older_than_s": older_than, "expired": len(expired)},
    )
    return JSONResponse({"expired": [asdict(item) for item in expired]})


# --- Health -------------------------------------------------------------------


async def health(request: Request) -> Response:
    gateway, _ = _context(request)
    await gateway.authorize(request, Action.HEALTH_READ)
    settings = gateway.settings

    def kafka() -> None:
        gateway.states.sync(HEALTH_TIMEOUT_S)

    def clamd() -> None:
        Clamd(settings.clamd_host, settings.clamd_port, HEALTH_TIMEOUT_S).version()

    def warehouse() -> None:
        url = f"http://{settings.warehouse_listen}/healthz"
        httpx.get(url, timeout=HEALTH_TIMEOUT_S).raise_for_status()

    checks = {"kafka": kafka, "clamd": clamd, "warehouse": warehouse}
    outcomes = await asyncio.gather(
        *(asyncio.to_thread(_probe, check) for check in checks.values())
    )
    components = dict(zip(checks, outcomes, strict=True))
    status = (
        "ok" if all(c["status"] == "ok" for c in components.values()) else "degraded"
    )
    return JSONResponse({"status": status, "components": components})


def _probe(check: Any) -> dict[str, str]:
    try:
        check()
    except (SluiceError, httpx.HTTPError, OSError) as exc:
        return {"status": "unavailable", "error": str(exc)[:200]}
    return {"status": "ok"}


# --- Tenants and service keys -------------------------------------------------


def _key_json(key: ServiceKey, now: float) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "tenant": key.tenant,
        "roles": sorted(key.roles),
        "state": key.state(now),
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "rotated_to": key.rotated_to,
        "description": key.description,
    }


def _issued_json(issued: IssuedKey, now: float) -> dict[str, Any]:
    return {"api_key": issued.api_key, "key": _key_json(issued.key, now)}


async def tenants(request: Request) -> Response:
    gateway, resources = _context(request)
    await gateway.authorize(request, Action.TENANTS_READ)

    keys = await asyncio.to_thread(resources.keys.list)
    now = time.time()
    summary: dict[str, dict[str, Any]] = {}
    for key in keys:
        entry = summary.setdefault(
            key.tenant, {"tenant": key.tenant, "keys": 0, "active_keys": 0}
        )
        entry["keys"] += 1
        entry["active_keys"] += key.state(now) in ("active", "rotating")
    return JSONResponse({"tenants": [summary[t] for t in sorted(summary)]})


async def list_keys(request: Request) -> Response:
    gateway, resources = _context(request)
    await gateway.authorize(request, Action.KEYS_READ)
    tenant = request.query_params.get("tenant") or None

    keys = await asyncio.to_thread(resources.keys.list, tenant)
    now = time.time()
    return JSONResponse({"keys": [_key_json(key, now) for key in keys]})


async def create_key(request: Request) -> Response:
    gateway, resources = _context(request)
    principal = await gateway.authorize(request, Action.KEYS_CREATE)
    body = await _body(request)
    tenant, roles = body.get("tenant"), body.get("roles")
    ttl_s = _int(body, "ttl_s", DEFAULT_TTL_S)
    description = body.get("description", "")
    if not isinstance(description, str):
        raise InvalidRequest("description must be a string", reason="description")

    try:
        issued = await asyncio.to_thread(
            resources.keys.create,
            str(tenant),
            roles if isinstance(roles, list) else [],
            ttl_s=ttl_s,
            description=description,
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc), reason="key") from exc

    await _record_key(request, principal, "key.created", issued.key)
    return JSONResponse(_issued_json(issued, time.time()), 201, headers=NO_STORE)


async def revoke_key(request: Request) -> Response:
    gateway, resources = _context(request)
    principal = await gateway.authorize(request, Action.KEYS_REVOKE)
    key_id = request.path_params["key_id"]

    try:
        key = await asyncio.to_thread(resources.keys.revoke, key_id)
    except UnknownServiceKey as exc:
        raise NotFound("no such service key", reason="not-found") from exc

    await _record_key(request, principal, "key.revoked", key)
    return JSONResponse({"key": _key_json(key, time.time())})


async def rotate_key(request: Request) -> Response:
    gateway, resources = _context(request)
    principal = await gateway.authorize(request, Action.KEYS_ROTATE)
    key_id = request.path_params["key_id"]
    body = await _body(request)
    grace_s = _int(body, "grace_s", DEFAULT_GRACE_S)
    ttl_s = _int(body, "ttl_s", DEFAULT_TTL_S)

    try:
        issued = await asyncio.to_thread(
            resources.keys.rotate, key_id, grace_s=grace_s, ttl_s=ttl_s
        )
    except UnknownServiceKey as exc:
        raise NotFound("no such service key", reason="not-found") from exc
    except ValueError as exc:
        raise InvalidRequest(str(exc), reason="key") from exc

    await _record_key(
        request, principal, "key.rotated", issued.key, previous=key_id, grace_s=grace_s
    )
    return JSONResponse(
        {**_issued_json(issued, time.time()), "previous": key_id}, 201, headers=NO_STORE
    )


async def _record_key(
    request: Request,
    principal: Principal,
    action: str,
    key: ServiceKey,
    **detail: object,
) -> None:
    gateway, _ = _context(request)
    await gateway.guard.record(
        request,
        principal,
        action=action,
        tenant=key.tenant,
        target=key.key_id,
        detail={"roles": ",".join(sorted(key.roles)), **detail},
    )


def routes() -> list[Route]:
    """The control routes, for the gateway's route table."""
    return [
        Route("/v1/ops/dead-letters", dead_letters, methods=["GET"]),
        Route("/v1/ops/dead-letters/replay", replay, methods=["POST"]),
        Route("/v1/ops/dead-letters/{event_id}", dead_letter, methods=["GET"]),
        Route("/v1/ops/quarantine", quarantined, methods=["GET"]),
        Route(
            "/v1/ops/quarantine/{tenant}/{upload_id}/release",
            release,
            methods=["POST"],
        ),
        Route(
            "/v1/ops/quarantine/{tenant}/{upload_id}",
            delete_quarantined,
            methods=["DELETE"],
        ),
        Route("/v1/ops/staging/sweep", sweep_staging, methods=["POST"]),
        Route("/v1/ops/health", health, methods=["GET"]),
        Route("/v1/admin/tenants", tenants, methods=["GET"]),
        Route("/v1/admin/keys", list_keys, methods=["GET"]),
        Route("/v1/admin/keys", create_key, methods=["POST"]),
        Route("/v1/admin/keys/{key_id}/revoke", revoke_key, methods=["POST"]),
        Route("/v1/admin/keys/{key_id}/rotate", rotate_key, methods=["POST"]),
    ]
