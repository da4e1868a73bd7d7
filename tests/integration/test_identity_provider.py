"""Production mode: a gateway trusting an identity provider's JWKS URL.

``sluice jwks serve`` plays the identity provider on loopback. A second
gateway, started here with ``SLUICE_JWKS_URL`` pointing at it, must answer
503 (retry later) while the key set cannot be fetched, accept tokens once
it can, refuse tokens of keys the set does not hold, and keep the last good
set when the provider goes away again.

Ports: this stack's base port plus 8 (the JWKS server) and 9 (the second
gateway), inside the range a test stack owns.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from streams.auth import DevKeys, RemoteJwks, TokenVerifier
from streams.config import Settings

from .conftest import TUS, bearer, eventually, run_sluice


def _ports(settings: Settings) -> tuple[int, int]:
    gateway_port = urlsplit(settings.gateway_url).port
    assert gateway_port is not None
    base = gateway_port - 3  # ops/scripts/test.sh: gateway at base + 3
    return base + 8, base + 9


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def jwks_url(settings: Settings) -> str:
    port, _ = _ports(settings)
    return f"http://127.0.0.1:{port}/.well-known/jwks.json"


@pytest.fixture(scope="module")
def idp_gateway(settings: Settings, jwks_url: str) -> Iterator[str]:
    _, port = _ports(settings)
    url = f"http://127.0.0.1:{port}"
    process = _start(
        ["gateway"],
        {
            "SLUICE_GATEWAY_LISTEN": f"127.0.0.1:{port}",
            "SLUICE_GATEWAY_URL": url,
            "SLUICE_GATEWAY_INSTANCE": "gw-idp-test",
            "SLUICE_GATEWAY_PRODUCERS": "1",
            "SLUICE_JWKS_URL": jwks_url,
            "SLUICE_JWKS_REFETCH_INTERVAL_S": "1",
        },
    )
    try:
        eventually(lambda: _answers(f"{url}/healthz"), timeout_s=90)
        yield url
    finally:
        _stop(process)


def _create(url: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{url}/files",
        headers={
            **TUS,
            **bearer(token),
            "Upload-Length": "1",
            "Upload-Metadata": "filename YS50eHQ=",
        },
        timeout=30,
    )


def test_the_gateway_follows_the_identity_providers_key_set(
    idp_gateway: str,
    jwks_url: str,
    settings: Settings,
    issue: Callable[..., str],
) -> None:
    token = issue("idp-tenant", "uploader")
    stranger = jwt.encode(
        {"sub": "x", "tenant": "idp-tenant", "roles": ["uploader"]},
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": "not-in-the-set"},
    )

    # No key set fetched yet: our outage, so 503 and a retry hint.
    down = _create(idp_gateway, token)
    assert down.status_code == 503
    assert down.headers["Retry-After"]

    server = _start(["jwks", "serve", "--listen", urlsplit(jwks_url).netloc], {})
    try:
        eventually(lambda: _answers(jwks_url), timeout_s=30)
        time.sleep(1.1)  # past the refetch interval of the failed attempt
        assert _create(idp_gateway, token).status_code == 201

        refused = _create(idp_gateway, stranger)
        assert refused.status_code == 401
        assert refused.json()["error"] == "unknown-key"
    finally:
        _stop(server)

    # The provider is gone; the last good key set still verifies.
    assert _create(idp_gateway, token).status_code == 201


def test_jwks_serve_publishes_the_development_keys(
    settings: Settings, jwks_url: str, issue: Callable[..., str]
) -> None:
    server = _start(["jwks", "serve", "--listen", urlsplit(jwks_url).netloc], {})
    try:
        eventually(lambda: _answers(jwks_url), timeout_s=30)
        served = httpx.get(jwks_url, timeout=5).json()
        verifier = TokenVerifier(
            RemoteJwks(jwks_url),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
        principal = verifier.verify(issue("acme", "reader"))
    finally:
        _stop(server)

    assert served == DevKeys.load_or_create(settings.keys_dir).jwks
    assert "d" not in served["keys"][0]
    assert principal.tenant == "acme"


def test_jwks_serve_refuses_to_listen_beyond_loopback() -> None:
    refused = run_sluice(None, "jwks", "serve", "--listen", "0.0.0.0:22008")

    assert refused.returncode == 2
    assert "loopback" in refused.stderr
