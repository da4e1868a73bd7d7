"""Tests for development token issuance and verification."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from streams.auth import (
    ROLES,
    AuthenticationError,
    DevKeys,
    Principal,
    TokenVerifier,
    jwk_thumbprint,
    parse_bearer,
)
from streams.config import Settings

ISSUER = "sluice-dev"
AUDIENCE = "sluice"


@pytest.fixture
def keys(tmp_path: Path) -> DevKeys:
    return DevKeys.load_or_create(tmp_path / "keys")


@pytest.fixture
def verifier(keys: DevKeys) -> TokenVerifier:
    return TokenVerifier(keys.jwks, issuer=ISSUER, audience=AUDIENCE)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for tenant acme; a value of None removes the claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "svc-1",
        "iat": now,
        "exp": now + 600,
        "tenant": "acme",
        "roles": ["uploader"],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def sign(keys: DevKeys, claims: dict[str, Any], kid: str | None = None) -> str:
    return jwt.encode(
        claims, keys.private_key, algorithm="EdDSA", headers={"kid": kid or keys.kid}
    )


def assert_refused(verifier: TokenVerifier, token: str, reason: str) -> None:
    with pytest.raises(AuthenticationError) as caught:
        verifier.verify(token)
    assert caught.value.reason == reason


def test_issue_and_verify_roundtrip(keys: DevKeys, verifier: TokenVerifier) -> None:
    token = keys.issue(
        "acme",
        ["uploader", "reader"],
        subject="alice",
        issuer=ISSUER,
        audience=AUDIENCE,
    )

    principal = verifier.verify(token)

    assert principal == Principal(
        subject="alice", tenant="acme", roles=frozenset({"uploader", "reader"})
    )


def test_every_role_is_accepted(keys: DevKeys, verifier: TokenVerifier) -> None:
    token = keys.issue("t1", ROLES, issuer=ISSUER, audience=AUDIENCE)

    assert verifier.verify(token).roles == ROLES


def test_keys_are_created_once_with_private_mode(tmp_path: Path) -> None:
    first = DevKeys.load_or_create(tmp_path)
    second = DevKeys.load_or_create(tmp_path)

    assert first.kid == second.kid
    key_mode = stat.S_IMODE((tmp_path / "signing-key.pem").stat().st_mode)
    assert key_mode == 0o600
    jwks = json.loads((tmp_path / "jwks.json").read_text())
    assert jwks == first.jwks
    assert "d" not in jwks["keys"][0]  # the private part never leaves the PEM


def test_kid_is_the_rfc7638_thumbprint(keys: DevKeys) -> None:
    jwk = keys.jwks["keys"][0]
    canonical = json.dumps(
        {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]}, separators=(",", ":")
    )
    expected = _b64url(hashlib.sha256(canonical.encode()).digest())

    assert jwk["kid"] == expected == jwk_thumbprint(jwk)


def test_rfc7638_example_thumbprint() -> None:
    # The RSA example of RFC 7638 section 3.1.
    jwk = {
        "kty": "RSA",
        "e": "AQAB",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7"
            "aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXA"
            "rwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7"
            "d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lF"
            "d2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
        ),
    }

    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_verifier_from_settings_creates_dev_keys(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    keys = DevKeys.load_or_create(settings.keys_dir)
    token = keys.issue("acme", ["reader"], issuer=ISSUER, audience=AUDIENCE)

    principal = TokenVerifier.from_settings(settings).verify(token)

    assert principal.tenant == "acme"


def test_verifier_from_settings_reads_jwks_file(tmp_path: Path) -> None:
    keys = DevKeys.load_or_create(tmp_path / "elsewhere")
    jwks_file = tmp_path / "idp-jwks.json"
    jwks_file.write_text(json.dumps(keys.jwks))
    settings = Settings(home=tmp_path, jwks_file=jwks_file, jwt_issuer="idp")
    token = keys.issue("acme", ["admin"], issuer="idp", audience=AUDIENCE)

    principal = TokenVerifier.from_settings(settings).verify(token)

    assert principal.roles == frozenset({"admin"})
    assert not (tmp_path / "keys").exists()  # no dev keys when a JWKS is given


def test_alg_none_is_refused(keys: DevKeys, verifier: TokenVerifier) -> None:
    header = _b64url(json.dumps({"alg": "none", "kid": keys.kid}).encode())
    payload = _b64url(json.dumps(make_claims()).encode())

    assert_refused(verifier, f"{header}.{payload}.", "algorithm-not-allowed")


def test_hs256_signed_with_the_public_key_is_refused(
    keys: DevKeys, verifier: TokenVerifier
) -> None:
    # Algorithm confusion: HMAC keyed with the published public key, which
    # a verifier trusting the header's alg would accept.
    public_pem = keys.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64url(json.dumps({"alg": "HS256", "kid": keys.kid}).encode())
    payload = _b64url(json.dumps(make_claims()).encode())
    mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256)

    token = f"{header}.{payload}.{_b64url(mac.digest())}"

    assert_refused(verifier, token, "algorithm-not-allowed")


def test_key_type_mismatch_is_refused(keys: DevKeys, verifier: TokenVerifier) -> None:
    # An ES256 token naming our Ed25519 key's kid.
    token = jwt.encode(
        make_claims(),
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": keys.kid},
    )

    assert_refused(verifier, token, "algorithm-not-allowed")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not-yet-valid"),
        ({"iat": int(time.time()) + 3600}, "not-yet-valid"),
        ({"iss": "someone-else"}, "wrong-issuer"),
        ({"aud": "other-service"}, "wrong-audience"),
        ({"tenant": None}, "invalid-claims"),
        ({"tenant": ""}, "invalid-claims"),
        ({"tenant": "Acme"}, "invalid-claims"),
        ({"tenant": "acme\n"}, "invalid-claims"),
        ({"tenant": "../acme"}, "invalid-claims"),
        ({"roles": ["uploader", "superuser"]}, "invalid-claims"),
        ({"roles": "admin"}, "invalid-claims"),
        ({"roles": []}, "invalid-claims"),
        ({"roles": None}, "invalid-claims"),
        ({"sub": None}, "invalid-claims"),
        ({"exp": None}, "invalid-claims"),
        ({"iat": None}, "invalid-claims"),
        ({"iss": None}, "invalid-claims"),
        ({"aud": None}, "invalid-claims"),
    ],
)
def test_bad_claims_are_refused(
    keys: DevKeys, verifier: TokenVerifier, overrides: dict[str, Any], reason: str
) -> None:
    assert_refused(verifier, sign(keys, make_claims(**overrides)), reason)


def test_small_clock_skew_is_tolerated(keys: DevKeys, verifier: TokenVerifier) -> None:
    token = sign(keys, make_claims(exp=int(time.time()) - 5))

    assert verifier.verify(token).tenant == "acme"


def test_unknown_kid_is_refused(keys: DevKeys, verifier: TokenVerifier) -> None:
    assert_refused(verifier, sign(keys, make_claims(), kid="not-a-kid"), "unknown-key")


def test_missing_kid_is_refused(keys: DevKeys, verifier: TokenVerifier) -> None:
    token = jwt.encode(make_claims(), keys.private_key, algorithm="EdDSA")

    assert_refused(verifier, token, "unknown-key")


def test_other_key_under_our_kid_is_a_bad_signature(
    keys: DevKeys, verifier: TokenVerifier
) -> None:
    token = jwt.encode(
        make_claims(),
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": keys.kid},
    )

    assert_refused(verifier, token, "bad-signature")


def test_tampered_payload_is_a_bad_signature(
    keys: DevKeys, verifier: TokenVerifier
) -> None:
    header, _, signature = sign(keys, make_claims()).split(".")
    payload = _b64url(json.dumps(make_claims(tenant="victim")).encode())

    assert_refused(verifier, f"{header}.{payload}.{signature}", "bad-signature")


@pytest.mark.parametrize(
    "token", ["not-a-jwt", "a.b.c", "....", "eyJhbGciOiJFZERTQSJ9", "x" * 9000]
)
def test_malformed_tokens_are_refused(verifier: TokenVerifier, token: str) -> None:
    assert_refused(verifier, token, "malformed")


def test_empty_token_is_missing(verifier: TokenVerifier) -> None:
    assert_refused(verifier, "", "missing-token")


def test_issue_refuses_bad_input(keys: DevKeys) -> None:
    with pytest.raises(ValueError, match="tenant"):
        keys.issue("Bad Tenant", ["reader"], issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(ValueError, match="roles"):
        keys.issue("acme", ["root"], issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(ValueError, match="ttl_s"):
        keys.issue("acme", ["reader"], ttl_s=0, issuer=ISSUER, audience=AUDIENCE)


@pytest.mark.parametrize(
    "jwks",
    [
        {},
        {"keys": []},
        {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]},
        {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]},  # no kid
    ],
)
def test_unusable_jwks_is_refused_eagerly(jwks: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TokenVerifier(jwks, issuer=ISSUER, audience=AUDIENCE)


def test_jwks_alg_narrows_accepted_algorithms(keys: DevKeys) -> None:
    bad = {"keys": [{**keys.jwks["keys"][0], "alg": "HS256"}]}

    with pytest.raises(ValueError, match="alg"):
        TokenVerifier(bad, issuer=ISSUER, audience=AUDIENCE)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc.def.ghi", "abc.def.ghi"),
        ("Bearer   abc.def-_~+/ghi==", "abc.def-_~+/ghi=="),
    ],
)
def test_parse_bearer(header: str, expected: str) -> None:
    assert parse_bearer(header) == expected


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing-token"),
        ("", "missing-token"),
        ("   ", "missing-token"),
        ("Bearer", "malformed"),
        ("Basic dXNlcjpwYXNz", "malformed"),
        ("Bearer a b", "malformed"),
        ("Bearer tok\u00e9n", "malformed"),
        ("Bearer " + "x" * 9000, "malformed"),
    ],
)
def test_parse_bearer_refuses(header: str | None, reason: str) -> None:
    with pytest.raises(AuthenticationError) as caught:
        parse_bearer(header)
    assert caught.value.reason == reason


def test_production_ec_key_set_is_accepted() -> None:
    # An identity provider's ES256 key, as a later JWKS file would hold it.
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwk["kid"] = jwk_thumbprint(jwk)
    verifier = TokenVerifier({"keys": [jwk]}, issuer=ISSUER, audience=AUDIENCE)
    token = jwt.encode(
        make_claims(), private, algorithm="ES256", headers={"kid": jwk["kid"]}
    )

    assert verifier.verify(token).subject == "svc-1"
