"""Forged and broken credentials against every endpoint of the real services.

One credential per class of attack or mistake; each is sent to every
authenticated gateway and warehouse endpoint and must get 401 with a
``WWW-Authenticate`` challenge and its stable reason. The refusals must
then be in the audit log, and neither the audit log nor the services' logs
may hold the credential itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from streams.auth import DevKeys, jwk_thumbprint
from streams.config import Settings
from streams.permissions import ENDPOINTS, Endpoint
from streams.service_keys import ServiceKeyStore

from .conftest import bearer, eventually


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: Any) -> str:
    return _b64(json.dumps(value).encode())


class Forger:
    """Builds credentials against the stack's own development keys."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = DevKeys.load_or_create(settings.keys_dir)
        self.store = ServiceKeyStore.from_settings(settings)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "sub": "mallory",
            "iat": now,
            "exp": now + 600,
            "tenant": "victim",
            "roles": ["uploader", "reader", "auditor", "operator", "admin"],
        }
        claims.update(overrides)
        return claims

    def signed(self, **overrides: Any) -> str:
        return jwt.encode(
            self.claims(**overrides),
            self.keys.private_key,
            algorithm="EdDSA",
            headers={"kid": self.keys.kid},
        )

    def alg_none(self) -> str:
        header = _segment({"alg": "none", "typ": "JWT", "kid": self.keys.kid})
        return f"{header}.{_segment(self.claims())}."

    def algorithm_confusion(self) -> str:
        # HS256 keyed with the published public key, as a naive verifier
        # that trusts the header's alg would accept.
        public = self.keys.private_key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        signing_input = (
            f"{_segment({'alg': 'HS256', 'kid': self.keys.kid})}."
            f"{_segment(self.claims())}"
        )
        mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(mac)}"

    def unknown_key(self) -> str:
        stranger = Ed25519PrivateKey.generate()
        public = stranger.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        kid = jwk_thumbprint({"kty": "OKP", "crv": "Ed25519", "x": _b64(public)})
        return jwt.encode(
            self.claims(), stranger, algorithm="EdDSA", headers={"kid": kid}
        )

    def bad_signature(self) -> str:
        return jwt.encode(
            self.claims(),
            Ed25519PrivateKey.generate(),
            algorithm="EdDSA",
            headers={"kid": self.keys.kid},
        )

    def tampered(self) -> str:
        header, _, signature = self.signed(tenant="mallory").split(".")
        return f"{header}.{_segment(self.claims())}.{signature}"

    def revoked_key(self) -> str:
        issued = self.store.create("victim", ["uploader"])
        self.store.revoke(issued.key.key_id)
        return issued.api_key

    def unknown_service_key(self) -> str:
        return f"sk_{uuid.uuid4().hex[:16]}_{_b64(uuid.uuid4().bytes * 2)}"


now = int(time.time())

# name -> (Authorization header value built by the forger, or None; reason)
CREDENTIALS: dict[str, tuple[Callable[[Forger], str | None], str]] = {
    "missing": (lambda f: None, "missing-token"),
    "not-bearer": (lambda f: "Basic dXNlcjpwYXNz", "malformed"),
    "malformed": (lambda f: "Bearer not.a.jwt", "malformed"),
    "garbage": (lambda f: "Bearer ???", "malformed"),
    "alg-none": (lambda f: f"Bearer {f.alg_none()}", "algorithm-not-allowed"),
    "algorithm-confusion": (
        lambda f: f"Bearer {f.algorithm_confusion()}",
        "algorithm-not-allowed",
    ),
    "expired": (lambda f: f"Bearer {f.signed(exp=now - 3600)}", "expired"),
    "not-yet-valid": (
        lambda f: f"Bearer {f.signed(nbf=now + 3600)}",
        "not-yet-valid",
    ),
    "issued-in-the-future": (
        lambda f: f"Bearer {f.signed(iat=now + 3600)}",
        "not-yet-valid",
    ),
    "wrong-issuer": (lambda f: f"Bearer {f.signed(iss='evil-idp')}", "wrong-issuer"),
    "wrong-audience": (
        lambda f: f"Bearer {f.signed(aud='another-service')}",
        "wrong-audience",
    ),
    "unknown-key": (lambda f: f"Bearer {f.unknown_key()}", "unknown-key"),
    "bad-signature": (lambda f: f"Bearer {f.bad_signature()}", "bad-signature"),
    "tampered-claims": (lambda f: f"Bearer {f.tampered()}", "bad-signature"),
    "invalid-claims": (
        lambda f: f"Bearer {f.signed(roles=['superuser'])}",
        "invalid-claims",
    ),
    "revoked-service-key": (lambda f: f"Bearer {f.revoked_key()}", "key-revoked"),
    "unknown-service-key": (
        lambda f: f"Bearer {f.unknown_service_key()}",
        "invalid-key",
    ),
}


@pytest.fixture(scope="module")
def forged(settings: Settings) -> dict[str, str | None]:
    forger = Forger(settings)
    return {name: build(forger) for name, (build, _) in CREDENTIALS.items()}


def _url(settings: Settings, endpoint: Endpoint) -> str:
    base = (
        settings.gateway_url
        if endpoint.service == "gateway"
        else f"http://{settings.warehouse_listen}"
    )
    path = (
        endpoint.path.replace("{upload_id}", "0" * 32)
        .replace("{tenant}", "victim")
        .replace("{key_id}", "0" * 16)
        .replace("{event_id}", "sluice.chunks:0:0")
    )
    return base + path


def _send(
    settings: Settings,
    endpoint: Endpoint,
    header: str | None,
    correlation_id: str = "",
) -> httpx.Response:
    headers = {"Tus-Resumable": "1.0.0", "Upload-Length": "1"}
    if header is not None:
        headers["Authorization"] = header
    if correlation_id:
        headers["X-Correlation-ID"] = correlation_id
    body = None
    if endpoint.method in ("POST", "PATCH"):
        body = b'{"sql": "SELECT 1"}'
    return httpx.request(
        endpoint.method,
        _url(settings, endpoint),
        headers=headers,
        content=body,
        timeout=30,
    )


@pytest.mark.parametrize("credential", list(CREDENTIALS))
@pytest.mark.parametrize(
    "endpoint", ENDPOINTS, ids=[f"{e.service}-{e.method}-{e.path}" for e in ENDPOINTS]
)
def test_refused_everywhere(
    settings: Settings,
    forged: dict[str, str | None],
    endpoint: Endpoint,
    credential: str,
) -> None:
    response = _send(settings, endpoint, forged[credential])

    assert response.status_code == 401, response.text
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="sluice"')
    if credential != "missing":
        assert 'error="invalid_token"' in challenge
    if endpoint.method != "HEAD":
        assert response.json()["error"] == CREDENTIALS[credential][1]


def _secrets(value: str | None) -> list[str]:
    """The parts of a credential that must never be stored anywhere."""
    if value is None:
        return []
    token = value.split(" ", 1)[-1]
    if token.startswith("sk_"):
        return [token.rsplit("_", 1)[-1]]
    return [part for part in token.split(".") if len(part) > 20]


def test_refusals_are_audited_without_the_credential(
    settings: Settings,
    forged: dict[str, str | None],
    issue: Callable[..., str],
) -> None:
    run = uuid.uuid4().hex[:8]
    endpoint = ENDPOINTS[0]
    for name, value in forged.items():
        response = _send(settings, endpoint, value, f"forged-{run}-{name}")
        assert response.status_code == 401

    platform_auditor = bearer(issue("ops", "auditor", audit_tenants=["_platform"]))
    sql = (
        "SELECT * FROM sluice.audit_log FINAL "
        f"WHERE startsWith(correlation_id, 'forged-{run}-')"
    )

    def audited() -> list[dict[str, Any]]:
        response = httpx.post(
            f"http://{settings.warehouse_listen}/v1/query",
            headers=platform_auditor,
            json={"sql": sql},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        rows = [json.loads(line) for line in response.text.splitlines()]
        return rows if len(rows) == len(forged) else []

    rows = eventually(audited, timeout_s=60)
    names = {f"forged-{run}-{name}": name for name in CREDENTIALS}
    by_name = {names[row["correlation_id"]]: row for row in rows}
    for name, (_, reason) in CREDENTIALS.items():
        row = by_name[name]
        assert row["action"] == "auth.failed", name
        assert row["tenant"] == "_platform", name
        assert row["actor"] == "anonymous", name
        assert row["outcome"] == "denied", name
        assert row["detail"]["reason"] == reason, name
        assert row["target"] == f"{endpoint.method} {endpoint.path}", name

    stored = json.dumps(rows)
    logs = "".join(
        (Path(settings.home) / "logs" / f"{name}.log").read_text(errors="replace")
        for name in ("gateway", "warehouse")
    )
    for value in forged.values():
        for secret in _secrets(value):
            assert secret not in stored
            assert secret not in logs


def test_a_victim_tenants_auditor_sees_no_forged_events(
    settings: Settings, issue: Callable[..., str]
) -> None:
    # Forged tokens name tenant "victim"; the claim must not reach its log
    # (nothing else ever acts for this tenant).
    auditor = bearer(issue("victim", "auditor"))
    response = httpx.post(
        f"http://{settings.warehouse_listen}/v1/query",
        headers=auditor,
        json={"sql": "SELECT count() AS n FROM sluice.audit_log"},
        timeout=30,
    )

    assert response.status_code == 200, response.text
    assert re.search(r'"n":"?0"?', response.text)
