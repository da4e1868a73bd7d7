"""The HTTP guard: 401/403/503 answers, and the audit events they leave.

A small Starlette app with one endpoint per outcome stands in for the
gateway and the warehouse; the audit log is a fake that keeps the encoded
events, so a test can look for a credential in the very bytes Kafka would
have received.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from streams import codec
from streams.audit import AuditLog, audit_event, correlation_id
from streams.auth import AuthenticationError, DevKeys, Principal, TokenVerifier
from streams.config import Settings
from streams.errors import ClientError, DependencyUnavailable
from streams.guard import Guard, www_authenticate
from streams.permissions import Action
from streams.service_keys import ServiceKeyStore


class FakeProducer:
    """Keeps produced messages and acknowledges each one at once."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bytes]] = []

    def produce(
        self, topic: str, *, key: bytes, value: bytes, headers: Any, on_delivery: Any
    ) -> None:
        self.messages.append((topic, key, value))
        on_delivery(None, None)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def events(self) -> list[dict[str, Any]]:
        return [codec.decode("AuditEvent", value) for _, _, value in self.messages]


class BrokenVerifier(TokenVerifier):
    """A verifier whose identity provider is down."""

    def verify(self, token: str) -> Principal:
        raise AuthenticationError("jwks-unavailable")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path)


@pytest.fixture
def keys(settings: Settings) -> DevKeys:
    return DevKeys.load_or_create(settings.keys_dir)


@pytest.fixture
def producer() -> FakeProducer:
    return FakeProducer()


def make_app(guard: Guard) -> Starlette:
    async def upload(request: Request) -> Response:
        principal = await guard.authorize(request, Action.UPLOAD_CREATE)
        await guard.record(
            request, principal, action="thing.done", tenant="rival", target="t1"
        )
        return JSONResponse({"tenant": principal.tenant})

    async def client_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ClientError)
        headers = {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = www_authenticate(exc.reason)
        return JSONResponse({"error": exc.reason}, exc.status, headers=headers)

    async def unavailable(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "unavailable"}, 503, {"Retry-After": "5"})

    return Starlette(
        routes=[Route("/upload", upload, methods=["POST"])],
        exception_handlers={
            ClientError: client_error,
            DependencyUnavailable: unavailable,
        },
    )


def make_client(guard: Guard) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=make_app(guard))
    return httpx.AsyncClient(transport=transport, base_url="http://sluice.test")


@pytest.fixture
def guard(settings: Settings, producer: FakeProducer) -> Guard:
    return Guard(
        TokenVerifier.from_settings(settings),
        ServiceKeyStore.from_settings(settings),
        AuditLog(settings, producer=producer),  # type: ignore[arg-type]
    )


@pytest.fixture
async def client(guard: Guard) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(guard) as test_client:
        yield test_client


def token(keys: DevKeys, *roles: str, tenant: str = "acme") -> str:
    return keys.issue(
        tenant, roles, subject="alice", issuer="sluice-dev", audience="sluice"
    )


async def test_an_allowed_action_is_answered_and_its_record_audited(
    client: httpx.AsyncClient, keys: DevKeys, producer: FakeProducer
) -> None:
    response = await client.post(
        "/upload",
        headers={
            "Authorization": f"Bearer {token(keys, 'uploader')}",
            "X-Correlation-ID": "corr-1",
        },
    )

    assert response.status_code == 200
    [event] = producer.events()
    assert event["action"] == "thing.done"
    assert event["tenant"] == "rival"  # the tenant the action touched
    assert event["actor"] == "alice"
    assert event["detail"]["actor_tenant"] == "acme"
    assert event["correlation_id"] == "corr-1"


async def test_a_refused_token_is_401_and_audited_without_the_token(
    client: httpx.AsyncClient, keys: DevKeys, producer: FakeProducer
) -> None:
    # Signed by us, but expired: the kind of token worth stealing from logs.
    expired = keys.issue(
        "acme",
        ["uploader"],
        issuer="sluice-dev",
        audience="sluice",
        ttl_s=60,
        now=0,
    )

    response = await client.post(
        "/upload", headers={"Authorization": f"Bearer {expired}"}
    )

    assert response.status_code == 401
    assert response.json() == {"error": "expired"}
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="sluice", error="invalid_token"'
    )
    [event] = producer.events()
    assert event["action"] == "auth.failed"
    assert event["tenant"] == "_platform"
    assert event["actor"] == "anonymous"
    assert event["outcome"] == "denied"
    assert event["detail"]["reason"] == "expired"
    assert event["target"] == "POST /upload"
    raw = b"".join(value for _, _, value in producer.messages)
    for piece in expired.split("."):
        assert piece.encode() not in raw


async def test_a_missing_token_gets_the_bare_challenge(
    client: httpx.AsyncClient, producer: FakeProducer
) -> None:
    response = await client.post("/upload")

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="sluice"'
    assert producer.events()[0]["detail"]["reason"] == "missing-token"


async def test_a_refused_service_key_is_audited_without_the_key(
    client: httpx.AsyncClient, settings: Settings, producer: FakeProducer
) -> None:
    store = ServiceKeyStore.from_settings(settings)
    issued = store.create("acme", ["uploader"])
    store.revoke(issued.key.key_id)

    response = await client.post(
        "/upload", headers={"Authorization": f"Bearer {issued.api_key}"}
    )

    assert response.status_code == 401
    assert response.json() == {"error": "key-revoked"}
    raw = b"".join(value for _, _, value in producer.messages)
    assert issued.api_key.rsplit("_", 1)[1].encode() not in raw


async def test_a_denied_role_is_403_and_audited_in_the_callers_tenant(
    client: httpx.AsyncClient, keys: DevKeys, producer: FakeProducer
) -> None:
    response = await client.post(
        "/upload", headers={"Authorization": f"Bearer {token(keys, 'auditor')}"}
    )

    assert response.status_code == 403
    [event] = producer.events()
    assert event["action"] == "permission.denied"
    assert event["target"] == "upload.create"
    assert event["tenant"] == "acme"
    assert event["actor"] == "alice"
    assert event["detail"]["roles"] == "auditor"


async def test_an_unreachable_key_set_is_503_not_401(
    settings: Settings, keys: DevKeys, producer: FakeProducer
) -> None:
    guard = Guard(
        BrokenVerifier(keys.jwks, issuer="sluice-dev", audience="sluice"),
        None,
        AuditLog(settings, producer=producer),  # type: ignore[arg-type]
    )
    async with make_client(guard) as client:
        response = await client.post(
            "/upload", headers={"Authorization": f"Bearer {token(keys, 'uploader')}"}
        )

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert producer.events()[0]["detail"]["reason"] == "jwks-unavailable"


@pytest.mark.parametrize(
    ("value", "kept"),
    [("abc-123", True), ("a" * 128, True), ("a" * 129, False), ("x y", False)],
)
def test_correlation_ids_are_kept_only_when_safe(value: str, kept: bool) -> None:
    assert (correlation_id(value) == value) is kept


def test_audit_details_are_strings_and_bounded() -> None:
    event = audit_event(
        tenant="acme",
        actor="alice",
        action="x",
        target="t",
        outcome="success",
        correlation_id="c",
        detail={"size": 12, "long": "y" * 1000, "none": None},
    )

    assert event["detail"] == {"size": "12", "long": "y" * 500}
    codec.encode("AuditEvent", event)  # fits the schema
