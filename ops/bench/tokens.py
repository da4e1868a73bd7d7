"""Token verification: p50 and p99 per algorithm, against a 1 ms target.

Each algorithm gets a fresh key and a verifier holding it, as the gateway
holds the identity provider's key set; one token is verified many times
(the verifier caches nothing per token, so each call does the full work:
header, key choice, signature, claims). The service-key row is a key's
steady state, after its first request paid for scrypt.

Wall-clock p50 and p99 are the latency a request sees; on a shared machine
the p99 also counts time the process was not scheduled, so the thread's CPU
time per call is printed beside it (``cpu p99``): the work verification
itself costs.
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from streams.auth import TokenVerifier, jwk_thumbprint
from streams.config import Settings
from streams.service_keys import ServiceKeyStore, authenticate

ISSUER = "bench-idp"
AUDIENCE = "sluice"
TARGET_MS = 1.0
WARMUP = 200
ROUNDS = 3000


def _claims() -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "bench",
        "iat": now,
        "exp": now + 3600,
        "tenant": "acme",
        "roles": ["uploader", "reader"],
    }


def _asymmetric(algorithm: str) -> tuple[TokenVerifier, str]:
    private: Any
    if algorithm in ("RS256", "PS256"):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = Ed25519PrivateKey.generate()
    jwk = dict(
        jwt.get_algorithm_by_name(algorithm).to_jwk(private.public_key(), as_dict=True)
    )
    jwk["kid"] = jwk_thumbprint(jwk)
    verifier = TokenVerifier({"keys": [jwk]}, issuer=ISSUER, audience=AUDIENCE)
    token = jwt.encode(_claims(), private, algorithm, headers={"kid": jwk["kid"]})
    return verifier, token


def _hs256() -> tuple[TokenVerifier, str]:
    # The key set is required even when only HS256 is used.
    _, _, ed_jwks = _ed25519_jwks()
    secret = secrets.token_urlsafe(32)
    verifier = TokenVerifier(
        ed_jwks, issuer=ISSUER, audience=AUDIENCE, hs256_secret=secret
    )
    return verifier, jwt.encode(_claims(), secret, algorithm="HS256")


def _ed25519_jwks() -> tuple[Any, str, dict[str, Any]]:
    private = Ed25519PrivateKey.generate()
    jwk = dict(
        jwt.get_algorithm_by_name("EdDSA").to_jwk(private.public_key(), as_dict=True)
    )
    jwk["kid"] = jwk_thumbprint(jwk)
    return private, jwk["kid"], {"keys": [jwk]}


def _measure(call: Callable[[], object]) -> tuple[list[float], list[float]]:
    """Wall-clock and thread-CPU milliseconds per call, after a warm-up."""
    for _ in range(WARMUP):
        call()
    wall, cpu = [], []
    for _ in range(ROUNDS):
        started, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
        call()
        cpu.append((time.thread_time_ns() - started_cpu) / 1e6)
        wall.append((time.perf_counter_ns() - started) / 1e6)
    return wall, cpu


def _row(name: str, samples: tuple[list[float], list[float]]) -> str:
    wall, cpu = samples
    cuts = statistics.quantiles(wall, n=100)
    p50, p99 = cuts[49], cuts[98]
    cpu_p99 = statistics.quantiles(cpu, n=100)[98]
    verdict = "under" if p99 < TARGET_MS else "over"
    return (
        f"{name:<28} {p50:>8.3f} {p99:>8.3f} {cpu_p99:>8.3f}   "
        f"p99 {verdict} {TARGET_MS:g} ms"
    )


def run(settings: Settings | None = None) -> list[str]:
    """p50/p99 verification latency per accepted algorithm, as report lines.

    Needs no stack: keys and verifiers are made here, in this process.
    """
    lines = [
        f"token verification, {ROUNDS} rounds each (ms)",
        f"{'':<28} {'p50':>8} {'p99':>8} {'cpu p99':>8}",
    ]
    for algorithm in ("RS256", "PS256", "ES256", "EdDSA"):
        verifier, token = _asymmetric(algorithm)
        lines.append(_row(algorithm, _measure(partial(verifier.verify, token))))
    verifier, token = _hs256()
    lines.append(_row("HS256", _measure(partial(verifier.verify, token))))

    # What a request costs at the door: header parsing included.
    verifier, token = _asymmetric("EdDSA")
    header = f"Bearer {token}"
    door = _measure(partial(authenticate, header, verifier))
    lines.append(_row("EdDSA, Authorization header", door))
    with TemporaryDirectory() as home:
        store = ServiceKeyStore(Path(home) / "service_keys.json")
        key_header = f"Bearer {store.create('acme', ['uploader']).api_key}"
        cached = _measure(partial(authenticate, key_header, verifier, store))
        lines.append(_row("service key (cached)", cached))
    return lines


if __name__ == "__main__":
    # Standalone, without the bench stack: python -m ops.bench.tokens
    print("\n".join(run()))
