"""Tests for token verification: dev keys, JWKS file and URL, HS256, forgeries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr, ValidationError

from streams.auth import (
    MAX_LEEWAY_S,
    ROLES,
    AuthenticationError,
    DevKeys,
    Principal,
    RemoteJwks,
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


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        (["rival", "_platform"], frozenset({"rival", "_platform"})),
        ([], frozenset()),
    ],
)
def test_audit_tenants_claim_is_read(
    keys: DevKeys, verifier: TokenVerifier, claim: list[str], expected: frozenset[str]
) -> None:
    token = sign(keys, make_claims(roles=["auditor"], audit_tenants=claim))

    assert verifier.verify(token).audit_tenants == expected


def test_a_token_without_audit_tenants_assigns_none(
    keys: DevKeys, verifier: TokenVerifier
) -> None:
    assert verifier.verify(sign(keys, make_claims())).audit_tenants is None


def test_dev_tokens_carry_audit_tenants(keys: DevKeys, verifier: TokenVerifier) -> None:
    token = keys.issue(
        "acme",
        ["auditor"],
        issuer=ISSUER,
        audience=AUDIENCE,
        audit_tenants=["rival", "acme"],
    )

    assert verifier.verify(token).audit_tenants == {"rival", "acme"}
    with pytest.raises(ValueError, match="tenant"):
        keys.issue(
            "acme", ["auditor"], issuer=ISSUER, audience=AUDIENCE, audit_tenants=["X"]
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
        ({"tenant": "acme__sales"}, "invalid-claims"),  # reads as a dataset table
        ({"tenant": "_platform"}, "invalid-claims"),  # the platform's audit tenant
        ({"audit_tenants": "acme"}, "invalid-claims"),
        ({"audit_tenants": ["Acme"]}, "invalid-claims"),
        ({"audit_tenants": [7]}, "invalid-claims"),
        ({"audit_tenants": ["t"] * 257}, "invalid-claims"),
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


# --- Keys of every accepted type ----------------------------------------------

HS256_SECRET = "a-shared-secret-of-at-least-32-bytes!"


@dataclass
class SigningKey:
    """A private key with its public JWK, whose kid is the RFC 7638 thumbprint."""

    private: Any
    algorithm: str
    jwk: dict[str, Any]

    @property
    def kid(self) -> str:
        return str(self.jwk["kid"])

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}

    def public_pem(self) -> bytes:
        pem: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        return pem

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> str:
        headers = {"kid": kid or self.kid}
        return jwt.encode(claims, self.private, self.algorithm, headers=headers)


def signing_key(algorithm: str) -> SigningKey:
    """A fresh key pair for ``algorithm``: RS256, PS256, ES256 or EdDSA."""
    private: Any
    if algorithm in ("RS256", "PS256"):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = Ed25519PrivateKey.generate()
    public = jwt.get_algorithm_by_name(algorithm).to_jwk(
        private.public_key(), as_dict=True
    )
    jwk = dict(public)
    jwk["kid"] = jwk_thumbprint(jwk)
    return SigningKey(private=private, algorithm=algorithm, jwk=jwk)


_EC_KEY = signing_key("ES256")


def segment(value: Any) -> str:
    """A JSON value as one base64url token segment."""
    return _b64url(json.dumps(value).encode())


def hs256_token(secret: bytes, header: dict[str, Any] | None = None) -> str:
    """An HS256 token over valid claims, keyed with ``secret`` by hand.

    PyJWT refuses to HMAC with a public key, so the attacker's token is
    built without it.
    """
    signing_input = f"{segment(header or {'alg': 'HS256'})}.{segment(make_claims())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(mac)}"


# --- Accepted algorithms ------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["RS256", "PS256", "ES256", "EdDSA"])
def test_valid_asymmetric_tokens_are_accepted(algorithm: str) -> None:
    key = signing_key(algorithm)
    verifier = TokenVerifier(key.jwks, issuer=ISSUER, audience=AUDIENCE)

    principal = verifier.verify(key.sign(make_claims()))

    assert principal == Principal("svc-1", "acme", frozenset({"uploader"}))


def test_rs256_key_refuses_an_es256_token_under_its_kid() -> None:
    rsa_key, ec_key = signing_key("RS256"), signing_key("ES256")
    verifier = TokenVerifier(rsa_key.jwks, issuer=ISSUER, audience=AUDIENCE)

    token = ec_key.sign(make_claims(), kid=rsa_key.kid)

    assert_refused(verifier, token, "algorithm-not-allowed")


# --- alg: none and algorithm confusion ----------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("hs256_secret", [None, HS256_SECRET])
def test_unsigned_tokens_are_refused(
    keys: DevKeys, alg: str, hs256_secret: str | None
) -> None:
    verifier = TokenVerifier(
        keys.jwks, issuer=ISSUER, audience=AUDIENCE, hs256_secret=hs256_secret
    )
    unsigned = f"{segment({'alg': alg, 'kid': keys.kid})}.{segment(make_claims())}"

    assert_refused(verifier, f"{unsigned}.", "algorithm-not-allowed")
    assert_refused(verifier, f"{unsigned}.c2ln", "algorithm-not-allowed")


def _public_key_secrets(key: SigningKey) -> dict[str, bytes]:
    """The byte strings an attacker might HMAC with: all public."""
    return {
        "pem": key.public_pem(),
        "jwk-json": json.dumps(key.jwk).encode(),
        "jwk-json-compact": json.dumps(key.jwk, separators=(",", ":")).encode(),
        "jwks-json": json.dumps(key.jwks).encode(),
    }


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_algorithm_confusion_is_refused_without_a_secret(algorithm: str) -> None:
    key = signing_key(algorithm)
    verifier = TokenVerifier(key.jwks, issuer=ISSUER, audience=AUDIENCE)

    for public_bytes in _public_key_secrets(key).values():
        token = hs256_token(public_bytes, {"alg": "HS256", "kid": key.kid})
        assert_refused(verifier, token, "algorithm-not-allowed")


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_algorithm_confusion_is_refused_with_a_secret(algorithm: str) -> None:
    # With HS256 enabled the attacker's MAC meets the configured secret,
    # never the key set's bytes.
    key = signing_key(algorithm)
    verifier = TokenVerifier(
        key.jwks, issuer=ISSUER, audience=AUDIENCE, hs256_secret=HS256_SECRET
    )

    for public_bytes in _public_key_secrets(key).values():
        for header in ({"alg": "HS256", "kid": key.kid}, {"alg": "HS256"}):
            assert_refused(verifier, hs256_token(public_bytes, header), "bad-signature")


# --- HS256 with a configured secret -------------------------------------------


@pytest.fixture
def hs_verifier(keys: DevKeys) -> TokenVerifier:
    return TokenVerifier(
        keys.jwks, issuer=ISSUER, audience=AUDIENCE, hs256_secret=HS256_SECRET
    )


def test_hs256_is_refused_when_no_secret_is_configured(
    verifier: TokenVerifier,
) -> None:
    token = jwt.encode(make_claims(), HS256_SECRET, algorithm="HS256")

    assert_refused(verifier, token, "algorithm-not-allowed")


def test_hs256_with_the_configured_secret_is_accepted(
    keys: DevKeys, hs_verifier: TokenVerifier
) -> None:
    token = jwt.encode(make_claims(), HS256_SECRET, algorithm="HS256")

    assert hs_verifier.verify(token).tenant == "acme"
    # The asymmetric keys keep working beside it.
    assert hs_verifier.verify(sign(keys, make_claims())).tenant == "acme"


def test_hs256_with_another_secret_is_a_bad_signature(
    hs_verifier: TokenVerifier,
) -> None:
    token = jwt.encode(make_claims(), "x" * 40, algorithm="HS256")

    assert_refused(hs_verifier, token, "bad-signature")


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_only_hs256_is_enabled_by_the_secret(
    hs_verifier: TokenVerifier, alg: str
) -> None:
    token = jwt.encode(make_claims(), HS256_SECRET * 2, algorithm=alg)

    assert_refused(hs_verifier, token, "algorithm-not-allowed")


def test_hs256_tokens_still_have_their_claims_checked(
    hs_verifier: TokenVerifier,
) -> None:
    expired = make_claims(exp=int(time.time()) - 3600)
    token = jwt.encode(expired, HS256_SECRET, algorithm="HS256")

    assert_refused(hs_verifier, token, "expired")


@pytest.mark.parametrize(
    ("secret", "match"),
    [
        ("", "32 bytes"),
        ("x" * 31, "32 bytes"),
        (b"\x00" * 31, "32 bytes"),
        (_EC_KEY.public_pem(), "public key"),
        (json.dumps(_EC_KEY.jwk), "public key"),
    ],
    ids=["empty", "31-chars", "31-bytes", "public-pem", "public-jwk"],
)
def test_unusable_hs256_secrets_are_refused_at_construction(
    keys: DevKeys, secret: str | bytes, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        TokenVerifier(keys.jwks, issuer=ISSUER, audience=AUDIENCE, hs256_secret=secret)


def test_hs256_secret_from_settings(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, jwt_hs256_secret=SecretStr(HS256_SECRET))
    token = jwt.encode(make_claims(), HS256_SECRET, algorithm="HS256")

    assert TokenVerifier.from_settings(settings).verify(token).subject == "svc-1"
    assert HS256_SECRET not in repr(settings)


def test_empty_hs256_secret_setting_means_unset(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, jwt_hs256_secret=SecretStr(""))
    token = jwt.encode(make_claims(), HS256_SECRET, algorithm="HS256")

    assert_refused(
        TokenVerifier.from_settings(settings), token, "algorithm-not-allowed"
    )


def test_short_hs256_secret_setting_fails_at_startup(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, jwt_hs256_secret=SecretStr("too-short"))

    with pytest.raises(ValueError, match="32 bytes"):
        TokenVerifier.from_settings(settings)


# --- Clock skew ---------------------------------------------------------------


@pytest.mark.parametrize("leeway_s", [-1, MAX_LEEWAY_S + 1, 3600])
def test_leeway_is_bounded(keys: DevKeys, leeway_s: float) -> None:
    with pytest.raises(ValueError, match="leeway_s"):
        TokenVerifier(keys.jwks, issuer=ISSUER, audience=AUDIENCE, leeway_s=leeway_s)


def test_leeway_setting_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        Settings(home=tmp_path, jwt_leeway_s=MAX_LEEWAY_S + 1)
    with pytest.raises(ValidationError):
        Settings(home=tmp_path, jwt_leeway_s=-1)


def test_leeway_setting_reaches_the_verifier(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, jwt_leeway_s=0)
    keys = DevKeys.load_or_create(settings.keys_dir)
    verifier = TokenVerifier.from_settings(settings)

    assert verifier.leeway_s == 0
    assert_refused(
        verifier, sign(keys, make_claims(exp=int(time.time()) - 5)), "expired"
    )


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": -60}, "expired"),
        ({"nbf": 60}, "not-yet-valid"),
        ({"iat": 60}, "not-yet-valid"),
        ({"nbf": 60, "iat": 60}, "not-yet-valid"),
    ],
)
def test_skew_beyond_the_leeway_is_refused(
    keys: DevKeys, verifier: TokenVerifier, overrides: dict[str, int], reason: str
) -> None:
    # Just past the default 30 s leeway, so the bound is what refuses.
    now = int(time.time())
    claims = make_claims(**{name: now + delta for name, delta in overrides.items()})

    assert_refused(verifier, sign(keys, claims), reason)


def test_skew_within_the_leeway_is_tolerated(
    keys: DevKeys, verifier: TokenVerifier
) -> None:
    now = int(time.time())
    token = sign(keys, make_claims(nbf=now + 10, iat=now + 10))

    assert verifier.verify(token).tenant == "acme"


# --- Malformed tokens ---------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param("\x00\xff binary", id="control-characters"),
        pytest.param(f"{segment({'alg': 'EdDSA'})}.{segment({})}", id="two-segments"),
        pytest.param("!!!.@@@.###", id="bad-base64"),
        pytest.param(f"{segment({'alg': 'EdDSA'})}.%%%.c2ln", id="bad-base64-payload"),
        pytest.param(f"{_b64url(b'not json')}.{segment({})}.c2ln", id="non-json"),
        pytest.param(f"{segment(['EdDSA'])}.{segment({})}.c2ln", id="header-list"),
        pytest.param(f"{segment({'alg': 7})}.{segment({})}.c2ln", id="alg-number"),
        pytest.param(
            f"{segment({'alg': 'EdDSA', 'kid': 7})}.{segment({})}.c2ln",
            id="kid-number",
        ),
        pytest.param("a.b.c.d.e.f", id="six-segments"),
    ],
)
def test_broken_tokens_are_malformed(verifier: TokenVerifier, token: str) -> None:
    assert_refused(verifier, token, "malformed")


def test_non_json_payload_is_refused(keys: DevKeys, verifier: TokenVerifier) -> None:
    header = segment({"alg": "EdDSA", "kid": keys.kid})
    payload = _b64url(b"not json")
    signature = keys.private_key.sign(f"{header}.{payload}".encode())

    assert_refused(verifier, f"{header}.{payload}.{_b64url(signature)}", "malformed")


# --- Remote JWKS --------------------------------------------------------------


@dataclass
class JwksServer:
    """A JWKS endpoint on 127.0.0.1 that counts the requests it answers."""

    url: str = ""
    jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    status: int = 200
    body: bytes | None = None  # served instead of the JWKS when set
    requests: int = 0


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    state = JwksServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests += 1
            body = state.body if state.body is not None else json.dumps(state.jwks)
            data = body.encode() if isinstance(body, str) else body
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def remote_verifier(
    jwks_server: JwksServer, clock: FakeClock
) -> Callable[..., TokenVerifier]:
    def make(**options: Any) -> TokenVerifier:
        remote = RemoteJwks(jwks_server.url, clock=clock, timeout_s=2, **options)
        return TokenVerifier(remote, issuer=ISSUER, audience=AUDIENCE)

    return make


def test_remote_jwks_is_fetched_once_and_cached(
    jwks_server: JwksServer, remote_verifier: Callable[..., TokenVerifier]
) -> None:
    key = signing_key("EdDSA")
    jwks_server.jwks = key.jwks
    verifier = remote_verifier()

    for _ in range(5):
        assert verifier.verify(key.sign(make_claims())).tenant == "acme"

    assert jwks_server.requests == 1


def test_rotation_is_picked_up_and_unknown_kids_are_rate_limited(
    jwks_server: JwksServer,
    remote_verifier: Callable[..., TokenVerifier],
    clock: FakeClock,
) -> None:
    old, new = signing_key("RS256"), signing_key("ES256")
    jwks_server.jwks = old.jwks
    verifier = remote_verifier(refetch_interval_s=30)
    assert verifier.verify(old.sign(make_claims())).tenant == "acme"
    assert jwks_server.requests == 1

    # The provider rotates: a new kid is published beside the old one.
    jwks_server.jwks = {"keys": [old.jwk, new.jwk]}
    clock.advance(31)
    assert verifier.verify(new.sign(make_claims())).tenant == "acme"
    assert jwks_server.requests == 2

    # A second unknown kid inside the window is refused without a fetch.
    stranger = signing_key("ES256")
    clock.advance(10)
    assert_refused(verifier, stranger.sign(make_claims()), "unknown-key")
    assert_refused(verifier, new.sign(make_claims(), kid="made-up"), "unknown-key")
    assert jwks_server.requests == 2

    # Once the window has passed, an unknown kid may fetch again.
    clock.advance(21)
    assert_refused(verifier, stranger.sign(make_claims()), "unknown-key")
    assert jwks_server.requests == 3


def test_refused_headers_never_trigger_a_fetch(
    jwks_server: JwksServer,
    remote_verifier: Callable[..., TokenVerifier],
    clock: FakeClock,
) -> None:
    key = signing_key("EdDSA")
    jwks_server.jwks = key.jwks
    verifier = remote_verifier()
    verifier.verify(key.sign(make_claims()))
    clock.advance(3600 * 24)  # past every interval; only max age could fetch

    unsigned = f"{segment({'alg': 'none', 'kid': 'x'})}.{segment(make_claims())}."
    assert_refused(verifier, unsigned, "algorithm-not-allowed")
    assert_refused(verifier, "garbage", "malformed")

    assert jwks_server.requests == 1


def test_key_set_is_refreshed_after_its_max_age(
    jwks_server: JwksServer,
    remote_verifier: Callable[..., TokenVerifier],
    clock: FakeClock,
) -> None:
    old, new = signing_key("EdDSA"), signing_key("EdDSA")
    jwks_server.jwks = old.jwks
    verifier = remote_verifier(max_age_s=600)
    assert verifier.verify(old.sign(make_claims())).tenant == "acme"

    # The provider withdraws the old key; after max age we stop trusting it.
    jwks_server.jwks = new.jwks
    clock.advance(599)
    assert verifier.verify(old.sign(make_claims())).tenant == "acme"
    clock.advance(2)
    assert_refused(verifier, old.sign(make_claims()), "unknown-key")

    assert verifier.verify(new.sign(make_claims())).tenant == "acme"
    assert jwks_server.requests == 2


@pytest.mark.parametrize(
    "failure",
    [
        {"status": 500},
        {"status": 302},
        {"body": b"<html>maintenance</html>"},
        {"body": b'{"keys": "not a list"}'},
        {"body": b"[]"},
        {"body": b'{"keys": []}'},
    ],
)
def test_fetch_failure_keeps_the_last_good_key_set(
    jwks_server: JwksServer,
    remote_verifier: Callable[..., TokenVerifier],
    clock: FakeClock,
    failure: dict[str, Any],
) -> None:
    key = signing_key("ES256")
    jwks_server.jwks = key.jwks
    verifier = remote_verifier(max_age_s=600)
    verifier.verify(key.sign(make_claims()))

    for name, value in failure.items():
        setattr(jwks_server, name, value)
    clock.advance(601)

    assert verifier.verify(key.sign(make_claims())).tenant == "acme"
    assert jwks_server.requests == 2


def test_no_key_set_at_all_refuses_as_unavailable(
    jwks_server: JwksServer,
    remote_verifier: Callable[..., TokenVerifier],
    clock: FakeClock,
) -> None:
    key = signing_key("EdDSA")
    jwks_server.status = 503
    verifier = remote_verifier(refetch_interval_s=30)

    with pytest.raises(AuthenticationError) as caught:
        verifier.verify(key.sign(make_claims()))
    assert caught.value.reason == "jwks-unavailable"
    assert caught.value.retriable  # our outage, not the caller's fault

    # Refusals do not hammer the provider while it is down...
    assert_refused(verifier, key.sign(make_claims()), "jwks-unavailable")
    assert jwks_server.requests == 1

    # ...and the first fetch after the window recovers.
    jwks_server.status = 200
    jwks_server.jwks = key.jwks
    clock.advance(30)
    assert verifier.verify(key.sign(make_claims())).tenant == "acme"
    assert jwks_server.requests == 2


def test_unreachable_provider_refuses_as_unavailable() -> None:
    # A port that was just free: connecting to it is refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    remote = RemoteJwks(f"http://127.0.0.1:{port}/jwks.json", timeout_s=1)
    verifier = TokenVerifier(remote, issuer=ISSUER, audience=AUDIENCE)

    assert_refused(
        verifier, signing_key("EdDSA").sign(make_claims()), "jwks-unavailable"
    )


def test_oversized_key_set_is_a_fetch_failure(
    jwks_server: JwksServer, remote_verifier: Callable[..., TokenVerifier]
) -> None:
    jwks_server.body = b" " * (1024 * 1024 + 1)

    assert_refused(
        remote_verifier(), signing_key("EdDSA").sign(make_claims()), "jwks-unavailable"
    )


def test_remote_key_set_skips_keys_we_do_not_verify_with(
    jwks_server: JwksServer, remote_verifier: Callable[..., TokenVerifier]
) -> None:
    key = signing_key("RS256")
    encryption = {**signing_key("RS256").jwk, "kid": "enc-1", "use": "enc"}
    exotic = {"kty": "OKP", "crv": "X25519", "x": "AAAA", "kid": "x25519"}
    mismatched = {**signing_key("RS256").jwk, "kid": "oaep", "alg": "RSA-OAEP"}
    jwks_server.jwks = {"keys": [encryption, exotic, mismatched, key.jwk]}

    assert remote_verifier().verify(key.sign(make_claims())).tenant == "acme"


def test_remote_key_set_with_private_material_is_refused(
    jwks_server: JwksServer, remote_verifier: Callable[..., TokenVerifier]
) -> None:
    key = signing_key("EdDSA")
    private = jwt.get_algorithm_by_name("EdDSA").to_jwk(key.private, as_dict=True)
    jwks_server.jwks = {"keys": [{**private, "kid": key.kid}]}

    assert_refused(remote_verifier(), key.sign(make_claims()), "jwks-unavailable")


def test_jwks_url_from_settings(tmp_path: Path, jwks_server: JwksServer) -> None:
    key = signing_key("PS256")
    jwks_server.jwks = key.jwks
    settings = Settings(home=tmp_path, jwks_url=jwks_server.url, jwt_issuer=ISSUER)

    verifier = TokenVerifier.from_settings(settings)

    assert verifier.verify(key.sign(make_claims())).subject == "svc-1"
    assert not (tmp_path / "keys").exists()  # no dev keys when a URL is given


def test_jwks_url_and_file_together_are_refused(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        jwks_url="https://idp.example/jwks.json",
        jwks_file=tmp_path / "jwks.json",
    )

    with pytest.raises(ValueError, match="not both"):
        TokenVerifier.from_settings(settings)


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example/jwks.json",
        "http://10.0.0.5/jwks.json",
        "ftp://idp.example/jwks.json",
        "file:///etc/jwks.json",
        "https:///jwks.json",
        "idp.example/jwks.json",
    ],
)
def test_insecure_jwks_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="https"):
        RemoteJwks(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example/.well-known/jwks.json",
        "http://127.0.0.1:8080/jwks.json",
        "http://localhost/jwks.json",
        "http://[::1]:8080/jwks.json",
    ],
)
def test_secure_jwks_urls_are_accepted_without_fetching(url: str) -> None:
    assert RemoteJwks(url).url == url
