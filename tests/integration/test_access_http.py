"""Every role against every HTTP endpoint of the real gateway and warehouse.

One case per endpoint (and per table family for queries) says which action
it needs and what an allowed call answers; each runs once per role with a
single-role token. A role the matrix allows gets that answer; any other
gets 403, and its refusal is found in the tenant's audit log.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from streams.config import Settings
from streams.permissions import ENDPOINTS, MATRIX, Action
from streams.service_keys import ServiceKeyStore

from .conftest import (
    ROLES,
    TUS,
    AccessWorld,
    bearer,
    create_upload,
    eventually,
    patch_upload,
)

Send = Callable[["Context", dict[str, str]], httpx.Response]


@dataclass
class Context:
    """What a case may use to make its request."""

    world: AccessWorld
    gateway: httpx.Client
    warehouse: httpx.Client
    keys: ServiceKeyStore

    def fresh_upload(self, length: int = 5) -> str:
        created = create_upload(self.gateway, self.world.auth("uploader"), length)
        assert created.status_code == 201, created.text
        return str(created.headers["Location"])

    def query(self, auth: dict[str, str], sql: str) -> httpx.Response:
        return self.warehouse.post("/v1/query", headers=auth, json={"sql": sql})


@dataclass(frozen=True)
class Case:
    """One endpoint, the action it needs, and an allowed call's status."""

    name: str
    service: str
    method: str
    path: str
    action: Action
    send: Send
    ok: int


def _release(ctx: Context, auth: dict[str, str]) -> httpx.Response:
    tenant, upload_id = ctx.world.tenant, ctx.world.quarantined[0]
    path = f"/v1/ops/quarantine/{tenant}/{upload_id}/release"
    return ctx.gateway.post(path, headers=auth)


def _delete(ctx: Context, auth: dict[str, str]) -> httpx.Response:
    tenant, upload_id = ctx.world.tenant, ctx.world.quarantined[1]
    return ctx.gateway.delete(f"/v1/ops/quarantine/{tenant}/{upload_id}", headers=auth)


def _revoke(ctx: Context, auth: dict[str, str]) -> httpx.Response:
    key = ctx.keys.create(ctx.world.tenant, ["uploader"]).key
    return ctx.gateway.post(f"/v1/admin/keys/{key.key_id}/revoke", headers=auth)


def _rotate(ctx: Context, auth: dict[str, str]) -> httpx.Response:
    key = ctx.keys.create(ctx.world.tenant, ["uploader"]).key
    return ctx.gateway.post(
        f"/v1/admin/keys/{key.key_id}/rotate", headers=auth, json={"grace_s": 60}
    )


def _events(ctx: Context, auth: dict[str, str]) -> httpx.Response:
    path = f"/v1/uploads/{ctx.world.upload_id}/events"
    with ctx.gateway.stream("GET", path, headers=auth) as response:
        if response.status_code != 200:
            response.read()
        return response


CASES = (
    Case(
        "tus-create",
        "gateway",
        "POST",
        "/files",
        Action.UPLOAD_CREATE,
        lambda ctx, auth: create_upload(ctx.gateway, auth, 5),
        201,
    ),
    Case(
        "tus-head",
        "gateway",
        "HEAD",
        "/files/{upload_id}",
        Action.UPLOAD_READ,
        lambda ctx, auth: ctx.gateway.head(ctx.world.location, headers={**TUS, **auth}),
        200,
    ),
    Case(
        "tus-patch",
        "gateway",
        "PATCH",
        "/files/{upload_id}",
        Action.UPLOAD_WRITE,
        lambda ctx, auth: patch_upload(
            ctx.gateway, auth, ctx.fresh_upload(), 0, b"hello"
        ),
        204,
    ),
    Case(
        "tus-delete",
        "gateway",
        "DELETE",
        "/files/{upload_id}",
        Action.UPLOAD_TERMINATE,
        lambda ctx, auth: ctx.gateway.delete(
            ctx.fresh_upload(), headers={**TUS, **auth}
        ),
        204,
    ),
    Case(
        "receipt",
        "gateway",
        "GET",
        "/v1/uploads/{upload_id}",
        Action.UPLOAD_READ,
        lambda ctx, auth: ctx.gateway.get(
            f"/v1/uploads/{ctx.world.upload_id}", headers=auth
        ),
        200,
    ),
    Case(
        "progress-events",
        "gateway",
        "GET",
        "/v1/uploads/{upload_id}/events",
        Action.UPLOAD_READ,
        _events,
        200,
    ),
    Case(
        "dlq-list",
        "gateway",
        "GET",
        "/v1/ops/dead-letters",
        Action.DEADLETTERS_READ,
        lambda ctx, auth: ctx.gateway.get("/v1/ops/dead-letters", headers=auth),
        200,
    ),
    Case(
        "dlq-show",
        "gateway",
        "GET",
        "/v1/ops/dead-letters/{event_id}",
        Action.DEADLETTERS_READ,
        lambda ctx, auth: ctx.gateway.get(
            f"/v1/ops/dead-letters/{ctx.world.dead_letter}", headers=auth
        ),
        200,
    ),
    Case(
        "staging-sweep",
        "gateway",
        "POST",
        "/v1/ops/staging/sweep",
        Action.STAGING_SWEEP,
        lambda ctx, auth: ctx.gateway.post(
            "/v1/ops/staging/sweep", headers=auth, json={"older_than_s": 1e9}
        ),
        200,
    ),
    Case(
        "dlq-replay",
        "gateway",
        "POST",
        "/v1/ops/dead-letters/replay",
        Action.DEADLETTERS_REPLAY,
        lambda ctx, auth: ctx.gateway.post(
            "/v1/ops/dead-letters/replay", headers=auth, json={"ids": ["none"]}
        ),
        200,
    ),
    Case(
        "quarantine-list",
        "gateway",
        "GET",
        "/v1/ops/quarantine",
        Action.QUARANTINE_READ,
        lambda ctx, auth: ctx.gateway.get(
            "/v1/ops/quarantine", headers=auth, params={"tenant": ctx.world.tenant}
        ),
        200,
    ),
    Case(
        "quarantine-release",
        "gateway",
        "POST",
        "/v1/ops/quarantine/{tenant}/{upload_id}/release",
        Action.QUARANTINE_RELEASE,
        _release,
        200,
    ),
    Case(
        "quarantine-delete",
        "gateway",
        "DELETE",
        "/v1/ops/quarantine/{tenant}/{upload_id}",
        Action.QUARANTINE_DELETE,
        _delete,
        200,
    ),
    Case(
        "health",
        "gateway",
        "GET",
        "/v1/ops/health",
        Action.HEALTH_READ,
        lambda ctx, auth: ctx.gateway.get("/v1/ops/health", headers=auth),
        200,
    ),
    Case(
        "tenants",
        "gateway",
        "GET",
        "/v1/admin/tenants",
        Action.TENANTS_READ,
        lambda ctx, auth: ctx.gateway.get("/v1/admin/tenants", headers=auth),
        200,
    ),
    Case(
        "keys-list",
        "gateway",
        "GET",
        "/v1/admin/keys",
        Action.KEYS_READ,
        lambda ctx, auth: ctx.gateway.get("/v1/admin/keys", headers=auth),
        200,
    ),
    Case(
        "keys-create",
        "gateway",
        "POST",
        "/v1/admin/keys",
        Action.KEYS_CREATE,
        lambda ctx, auth: ctx.gateway.post(
            "/v1/admin/keys",
            headers=auth,
            json={"tenant": ctx.world.tenant, "roles": ["uploader"]},
        ),
        201,
    ),
    Case(
        "keys-revoke",
        "gateway",
        "POST",
        "/v1/admin/keys/{key_id}/revoke",
        Action.KEYS_REVOKE,
        _revoke,
        200,
    ),
    Case(
        "keys-rotate",
        "gateway",
        "POST",
        "/v1/admin/keys/{key_id}/rotate",
        Action.KEYS_ROTATE,
        _rotate,
        201,
    ),
    Case(
        "query-results",
        "warehouse",
        "POST",
        "/v1/query",
        Action.RESULTS_READ,
        lambda ctx, auth: ctx.query(
            auth, "SELECT count() AS n FROM sluice.file_results FINAL"
        ),
        200,
    ),
    Case(
        "query-datasets",
        "warehouse",
        "POST",
        "/v1/query",
        Action.DATASETS_READ,
        lambda ctx, auth: ctx.query(
            auth, f"SELECT count() AS n FROM datasets.{ctx.world.tenant}__data"
        ),
        200,
    ),
    Case(
        "query-audit",
        "warehouse",
        "POST",
        "/v1/query",
        Action.AUDIT_READ,
        lambda ctx, auth: ctx.query(auth, "SELECT count() AS n FROM sluice.audit_log"),
        200,
    ),
    Case(
        "query-dead-letters",
        "warehouse",
        "POST",
        "/v1/query",
        Action.DEADLETTERS_READ,
        lambda ctx, auth: ctx.query(
            auth, "SELECT count() AS n FROM sluice.dead_letters"
        ),
        200,
    ),
    Case(
        "warehouse-upload",
        "warehouse",
        "GET",
        "/v1/uploads/{upload_id}",
        Action.UPLOAD_READ,
        lambda ctx, auth: ctx.warehouse.get(
            f"/v1/uploads/{ctx.world.upload_id}", headers=auth
        ),
        200,
    ),
)

# Correlation ids of the refused calls, checked against the audit log last.
_DENIED: dict[str, tuple[str, Action]] = {}
_RUN = uuid.uuid4().hex[:8]


def test_every_endpoint_has_a_case() -> None:
    covered = {(c.service, c.method, c.path) for c in CASES}

    assert covered == {(e.service, e.method, e.path) for e in ENDPOINTS}
    # topics are the command line's alone (test_access_cli).
    assert {c.action for c in CASES} == set(Action) - {
        Action.TOPICS_READ,
        Action.TOPICS_APPLY,
    }


@pytest.fixture(scope="module")
def context(access_world: AccessWorld, settings: Settings) -> Context:
    gateway = httpx.Client(base_url=settings.gateway_url, timeout=60)
    warehouse = httpx.Client(base_url=f"http://{settings.warehouse_listen}", timeout=60)
    return Context(
        access_world, gateway, warehouse, ServiceKeyStore.from_settings(settings)
    )


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_role_against_endpoint(context: Context, case: Case, role: str) -> None:
    allowed = role in MATRIX[case.action].roles
    correlation_id = f"matrix-{_RUN}-{case.name}-{role}"
    auth = {**context.world.auth(role), "X-Correlation-ID": correlation_id}

    response = case.send(context, auth)

    if allowed:
        assert response.status_code == case.ok, response.text
    else:
        assert response.status_code == 403, response.text
        if case.method != "HEAD":
            assert response.json()["error"] == "forbidden"
        _DENIED[correlation_id] = (role, case.action)


def test_every_refusal_is_in_the_tenants_audit_log(
    access_world: AccessWorld, settings: Settings
) -> None:
    assert _DENIED, "run with the matrix cases"
    auditor = bearer(access_world.tokens["auditor"])
    sql = (
        "SELECT correlation_id, actor, target, outcome, detail['roles'] AS roles "
        "FROM sluice.audit_log FINAL WHERE action = 'permission.denied' "
        f"AND startsWith(correlation_id, 'matrix-{_RUN}-')"
    )

    def audited() -> dict[str, dict[str, str]]:
        response = httpx.post(
            f"http://{settings.warehouse_listen}/v1/query",
            headers=auditor,
            json={"sql": sql},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        rows = [json.loads(line) for line in response.text.splitlines() if line]
        found = {row["correlation_id"]: row for row in rows}
        return found if set(_DENIED) <= set(found) else {}

    found = eventually(audited, timeout_s=60)
    for correlation_id, (role, action) in _DENIED.items():
        row = found[correlation_id]
        assert row["target"] == action.value
        assert row["outcome"] == "denied"
        assert row["roles"] == role
        assert row["actor"] == f"test-{access_world.tenant}"
