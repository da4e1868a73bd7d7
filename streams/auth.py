"""Bearer tokens: development issuance and verification against a JWKS.

Every request to the gateway and warehouse carries a JWT whose claims name a
tenant and a set of roles (and, for auditors, the ``audit_tenants`` they
audit). :class:`TokenVerifier` checks such a token against a JSON Web Key
Set and returns a :class:`Principal`; it is the one place where PyJWT's
errors become :class:`AuthenticationError` with a stable reason code. What
a principal may then do is :mod:`streams.permissions`' business.

Where the key set comes from, in order of precedence:

- ``SLUICE_JWKS_URL``: the identity provider's JWKS endpoint, fetched by
  :class:`RemoteJwks`, cached, refetched when a token names an unknown
  ``kid`` (at most once per ``SLUICE_JWKS_REFETCH_INTERVAL_S``) and after
  ``SLUICE_JWKS_MAX_AGE_S``. A failed fetch keeps the last good set; with
  none, tokens are refused with the retriable reason ``jwks-unavailable``.
- ``SLUICE_JWKS_FILE``: a key set on disk, read once.
- Otherwise, in the embedded mode, :class:`DevKeys` creates an Ed25519 key
  pair under ``SLUICE_HOME/keys`` and signs tokens with it.

Asymmetric algorithms (EdDSA, ES*, RS*, PS*) are accepted by key type.
HS256 is accepted only when ``SLUICE_JWT_HS256_SECRET`` is set, and then only
with that secret, never with bytes taken from the key set.

Producer services may authenticate with an API key (``sk_...``) instead;
:mod:`streams.service_keys` verifies those and returns the same
:class:`Principal`.

Limits: the remote fetch is synchronous (bounded by
``SLUICE_JWKS_TIMEOUT_S``) and runs inside :meth:`TokenVerifier.verify`, so
an async caller whose identity provider is slow should call ``verify`` in a
worker thread. Plain ``http://`` JWKS URLs are refused except on loopback.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import HMACAlgorithm

from streams.logs import get_logger

if TYPE_CHECKING:
    from streams.config import Settings

__all__ = [
    "PLATFORM_TENANT",
    "ROLES",
    "AuthenticationError",
    "DevKeys",
    "Principal",
    "RemoteJwks",
    "TokenVerifier",
    "check_audit_tenants",
    "check_roles",
    "check_tenant",
    "jwk_thumbprint",
    "parse_bearer",
]

ROLES: Final = frozenset({"uploader", "reader", "operator", "auditor", "admin"})

# The audit tenant of events no tenant owns (authentication failures, topic
# changes, dead letters without a tenant). The leading underscore keeps it
# outside the tenant slug syntax, so no token can ever name it as its tenant.
PLATFORM_TENANT: Final = "_platform"

SIGNING_KEY_FILE: Final = "signing-key.pem"
JWKS_FILE: Final = "jwks.json"
DEV_ALGORITHM: Final = "EdDSA"

# A tenant id becomes part of storage paths and topic keys, so it is kept to
# a conservative slug. fullmatch, because "$" would accept a trailing "\n".
_TENANT_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# Dataset tables are named "<tenant>__<dataset>": a tenant holding "__"
# could own a name that also reads as another tenant's table.
_TENANT_SEPARATOR: Final = "__"

# An auditor may be assigned many tenants, but not an unbounded list.
MAX_AUDIT_TENANTS: Final = 256
_TOKEN68_RE: Final = re.compile(r"[A-Za-z0-9._~+/-]+=*")

# Bounds the work done on unauthenticated input; real tokens are < 2 KiB.
MAX_TOKEN_CHARS: Final = 8192

# Clock skew beyond a few minutes is a broken clock, not skew; a large
# leeway would quietly extend every token's lifetime.
MAX_LEEWAY_S: Final = 300

# RFC 7518 section 3.2: an HS256 key at least as long as the hash output.
MIN_HS256_SECRET_BYTES: Final = 32

# Real key sets are a few KiB; the bound keeps a misbehaving endpoint from
# making us buffer without limit.
MAX_JWKS_BYTES: Final = 1024 * 1024

log = get_logger(__name__)

# Asymmetric algorithms, each tied to the key type that can verify it. HS256
# is handled apart (see TokenVerifier): a JWKS never supplies an HMAC key,
# since with a public key set that invites the algorithm-confusion attack.
_ALGORITHMS_BY_KEY: Final[dict[tuple[str, str | None], frozenset[str]]] = {
    ("OKP", "Ed25519"): frozenset({"EdDSA"}),
    ("EC", "P-256"): frozenset({"ES256"}),
    ("EC", "P-384"): frozenset({"ES384"}),
    ("EC", "P-521"): frozenset({"ES512"}),
    ("RSA", None): frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
}
_ACCEPTED_ALGORITHMS: Final = frozenset().union(*_ALGORITHMS_BY_KEY.values())

# RFC 7638 section 3.2: the members hashed for each key type.
_THUMBPRINT_MEMBERS: Final = {
    "OKP": ("crv", "kty", "x"),
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
}

_MESSAGES: Final[dict[str, str]] = {
    "missing-token": "a bearer token is required",
    "malformed": "the bearer token is malformed",
    "unknown-key": "the token was signed by an unknown key",
    "bad-signature": "the token signature is invalid",
    "expired": "the token has expired",
    "not-yet-valid": "the token is not valid yet",
    "wrong-issuer": "the token was issued by an untrusted issuer",
    "wrong-audience": "the token is meant for another audience",
    "invalid-claims": "the token claims are missing or invalid",
    "algorithm-not-allowed": "the token signing algorithm is not allowed",
    "jwks-unavailable": "the signing keys are unavailable; try again later",
    "invalid-key": "the API key is invalid",
    "key-revoked": "the API key has been revoked",
    "key-expired": "the API key has expired",
}

# Reasons that describe our state, not the caller's credentials: the same
# request may succeed later, so HTTP layers should answer 503, not 401.
_RETRIABLE_REASONS: Final = frozenset({"jwks-unavailable"})


class AuthenticationError(Exception):
    """A request's credentials were missing or refused.

    ``reason`` is a stable machine code (see ``_MESSAGES``); the message is
    safe to return to the client, the chained cause is for logs only.
    ``retriable`` is true when the refusal is ours (the key set could not be
    fetched), not the credentials' fault.
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        self.retriable = reason in _RETRIABLE_REASONS
        super().__init__(message or _MESSAGES.get(reason, "authentication failed"))


@dataclass(frozen=True)
class Principal:
    """The verified identity behind a request.

    ``audit_tenants`` is the token's ``audit_tenants`` claim: the tenants an
    auditor is assigned. ``None`` means the claim was absent, and an auditor
    then audits its own tenant only (see :mod:`streams.permissions`).
    """

    subject: str
    tenant: str
    roles: frozenset[str]
    audit_tenants: frozenset[str] | None = None


def parse_bearer(header_value: str | None) -> str:
    """Return the token of an ``Authorization: Bearer <token>`` header value."""
    if header_value is None or not header_value.strip():
        raise AuthenticationError("missing-token")

    parts = header_value.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise AuthenticationError("malformed")

    token = parts[1]
    if len(token) > MAX_TOKEN_CHARS or not _TOKEN68_RE.fullmatch(token):
        raise AuthenticationError("malformed")

    return token


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK, base64url without padding."""
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty", ""))
    if members is None:
        raise ValueError(f"no thumbprint rule for key type {jwk.get('kty')!r}")

    canonical = json.dumps(
        {name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True
    )
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return _b64url(digest)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def check_tenant(tenant: object) -> str:
    """Return ``tenant`` if it is a valid tenant slug, else raise ValueError."""
    if (
        not isinstance(tenant, str)
        or not _TENANT_RE.fullmatch(tenant)
        or _TENANT_SEPARATOR in tenant
    ):
        raise ValueError('tenant must match [a-z0-9][a-z0-9_-]{0,62}, without "__"')
    return tenant


def check_audit_tenants(tenants: object) -> frozenset[str]:
    """Return an ``audit_tenants`` claim as a set, else raise ValueError.

    Each entry is a tenant slug or :data:`PLATFORM_TENANT`; an empty list is
    valid and assigns nothing.
    """
    if not isinstance(tenants, list | tuple | set | frozenset):
        raise ValueError("audit_tenants must be a list")
    if len(tenants) > MAX_AUDIT_TENANTS:
        raise ValueError(f"audit_tenants holds more than {MAX_AUDIT_TENANTS} tenants")
    for tenant in tenants:
        if tenant != PLATFORM_TENANT:
            check_tenant(tenant)
    return frozenset(tenants)


def check_roles(roles: object) -> frozenset[str]:
    """Return ``roles`` as a set if non-empty and all known, else raise ValueError."""
    # A token with no roles can do nothing; refusing it surfaces the
    # misconfiguration at the door instead of as a string of 403s.
    if not isinstance(roles, list | tuple | set | frozenset) or not roles:
        raise ValueError("roles must be a non-empty list")
    unknown = {str(role) for role in roles} - ROLES
    if unknown or not all(isinstance(role, str) for role in roles):
        raise ValueError(f"unknown roles: {sorted(unknown)}")
    return frozenset(roles)


class DevKeys:
    """The development signing key and its public JWKS, kept under a directory.

    The private key is written once, with mode 0600; concurrent processes
    racing to create it all end up using the first one written.
    """

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key
        public_raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        public_jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(public_raw)}
        self.kid = jwk_thumbprint(public_jwk)
        self.public_jwk: dict[str, str] = {
            **public_jwk,
            "kid": self.kid,
            "alg": DEV_ALGORITHM,
            "use": "sig",
        }

    @property
    def jwks(self) -> dict[str, Any]:
        """The public key set, as served or written to ``jwks.json``."""
        return {"keys": [dict(self.public_jwk)]}

    @classmethod
    def load_or_create(cls, keys_dir: Path) -> DevKeys:
        """Load the key pair under ``keys_dir``, creating it on first use."""
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path = keys_dir / SIGNING_KEY_FILE

        if not key_path.exists():
            _create_private_key(key_path)
        keys = cls(_load_private_key(key_path))

        # The JWKS is derived from the private key, so rewriting it is safe
        # and repairs a deleted or stale file.
        jwks_path = keys_dir / JWKS_FILE
        wanted = json.dumps(keys.jwks, indent=2) + "\n"
        if not jwks_path.exists() or jwks_path.read_text("utf-8") != wanted:
            _write_atomic(jwks_path, wanted.encode("utf-8"), mode=0o644)

        return keys

    def issue(
        self,
        tenant: str,
        roles: Iterable[str],
        subject: str = "dev",
        ttl_s: int = 3600,
        *,
        issuer: str,
        audience: str,
        audit_tenants: Iterable[str] | None = None,
        now: float | None = None,
    ) -> str:
        """Sign a token for ``tenant`` with ``roles``, valid for ``ttl_s``."""
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        if not subject:
            raise ValueError("subject must be non-empty")
        role_set = check_roles(list(roles))
        issued_at = int(time.time() if now is None else now)

        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + ttl_s,
            "jti": uuid.uuid4().hex,  # lets audit records name one token
            "tenant": check_tenant(tenant),
            "roles": sorted(role_set),
        }
        if audit_tenants is not None:
            claims["audit_tenants"] = sorted(check_audit_tenants(list(audit_tenants)))
        return jwt.encode(
            claims, self.private_key, algorithm=DEV_ALGORITHM, headers={"kid": self.kid}
        )


def _create_private_key(key_path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Write a private temp file, then link it into place: link fails if
    # another process won the race, and that process's key is kept.
    fd, tmp_name = tempfile.mkstemp(dir=key_path.parent, prefix=".signing-key-")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(pem)
            tmp.flush()
            os.fsync(tmp.fileno())
        try:
            os.link(tmp_name, key_path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp_name)


def _load_private_key(key_path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{key_path} does not hold an Ed25519 private key")
    return key


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        os.unlink(tmp_name)
        raise


@dataclass(frozen=True)
class _VerificationKey:
    key: jwt.PyJWK
    algorithms: frozenset[str]


class RemoteJwks:
    """A JWKS fetched from an identity provider's URL and cached.

    The set is refetched when a token names a ``kid`` it does not hold (key
    rotation) and once it is older than ``max_age_s`` (key removal). Fetch
    attempts of either kind are at least ``refetch_interval_s`` apart, so
    tokens with made-up kids cannot make us hammer the provider. A failed
    fetch keeps the last good set.
    """

    def __init__(
        self,
        url: str,
        *,
        refetch_interval_s: float = 30,
        max_age_s: float = 600,
        timeout_s: float = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_jwks_url(url)
        if refetch_interval_s <= 0 or max_age_s <= 0 or timeout_s <= 0:
            raise ValueError("JWKS intervals and timeout must be positive")
        self.url = url
        self.refetch_interval_s = refetch_interval_s
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._keys: dict[str, _VerificationKey] | None = None
        self._fetched_at = 0.0  # of the current set, by self._clock
        self._attempted_at: float | None = None
        self._lock = threading.Lock()

    def get(self, kid: str) -> _VerificationKey | None:
        """The key named ``kid``, refetching the set if it may be stale."""
        if self._keys is None or self._clock() - self._fetched_at >= self.max_age_s:
            self._refresh()
        if self._keys is None:
            raise AuthenticationError("jwks-unavailable")

        entry = self._keys.get(kid)
        if entry is None and self._refresh():
            entry = self._keys.get(kid)
        return entry

    def _refresh(self) -> bool:
        """Fetch the set unless a fetch was attempted too recently."""
        with self._lock:
            # Checked under the lock: a thread that waited here while
            # another fetched must not fetch again.
            now = self._clock()
            if (
                self._attempted_at is not None
                and now - self._attempted_at < self.refetch_interval_s
            ):
                return False
            self._attempted_at = now

            try:
                keys = self._fetch()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning(
                    "jwks.fetch_failed",
                    url=self.url,
                    error=str(exc),
                    have_keys=self._keys is not None,
                )
                return False

            self._keys = keys
            self._fetched_at = now
            log.info("jwks.fetched", url=self.url, keys=len(keys))
            return True

    def _fetch(self) -> dict[str, _VerificationKey]:
        # No redirects and no proxy from the environment: where the keys
        # come from is decided by the configured URL alone.
        with (
            httpx.Client(
                timeout=self.timeout_s, follow_redirects=False, trust_env=False
            ) as client,
            client.stream(
                "GET", self.url, headers={"Accept": "application/json"}
            ) as response,
        ):
            if response.status_code != 200:
                raise ValueError(f"JWKS endpoint answered {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS response is too large")

        document = json.loads(bytes(body))
        if not isinstance(document, dict):
            raise ValueError("JWKS response is not a JSON object")
        return _index_jwks(document, skip_unsupported=True)


def _check_jwks_url(url: str) -> None:
    # Whoever can answer this URL decides which tokens we accept, so plain
    # HTTP is allowed only where no network sits in between.
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname:
        if parts.hostname == "localhost":
            return
        try:
            if ipaddress.ip_address(parts.hostname).is_loopback:
                return
        except ValueError:
            pass
    raise ValueError("the JWKS URL must be https:// (http:// only on loopback)")


class TokenVerifier:
    """Verifies bearer tokens against a JSON Web Key Set.

    Each key accepts only the algorithms of its type (narrowed further by the
    key's own ``alg``), and the token's ``kid`` must name one of them. With
    ``hs256_secret``, HS256 tokens are accepted too, verified with that
    secret only.
    """

    def __init__(
        self,
        jwks: Mapping[str, Any] | RemoteJwks,
        issuer: str,
        audience: str,
        leeway_s: float = 30,
        *,
        hs256_secret: str | bytes | None = None,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("issuer and audience must be non-empty")
        if not 0 <= leeway_s <= MAX_LEEWAY_S:
            raise ValueError(f"leeway_s must be between 0 and {MAX_LEEWAY_S}")
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s

        self._remote: RemoteJwks | None = None
        self._keys: dict[str, _VerificationKey] = {}
        if isinstance(jwks, RemoteJwks):
            self._remote = jwks
        else:
            self._keys = _index_jwks(jwks)

        self._hs256_key: bytes | None = None
        if hs256_secret is not None:
            self._hs256_key = _check_hs256_secret(hs256_secret)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        """Verifier for the configured JWKS URL or file, or the development keys."""
        jwks: Mapping[str, Any] | RemoteJwks
        if settings.jwks_url and settings.jwks_file is not None:
            raise ValueError("set SLUICE_JWKS_URL or SLUICE_JWKS_FILE, not both")
        if settings.jwks_url:
            jwks = RemoteJwks(
                settings.jwks_url,
                refetch_interval_s=settings.jwks_refetch_interval_s,
                max_age_s=settings.jwks_max_age_s,
                timeout_s=settings.jwks_timeout_s,
            )
        elif settings.jwks_file is not None:
            jwks = json.loads(settings.jwks_file.read_text("utf-8"))
        else:
            jwks = DevKeys.load_or_create(settings.keys_dir).jwks

        # An empty variable means "not configured", like SLUICE_JWKS_URL.
        secret = settings.jwt_hs256_secret
        hs256_secret = secret.get_secret_value() if secret is not None else ""

        return cls(
            jwks,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway_s=settings.jwt_leeway_s,
            hs256_secret=hs256_secret or None,
        )

    def verify(self, token: str) -> Principal:
        """Return the principal of a valid token, or raise AuthenticationError."""
        if not token:
            raise AuthenticationError("missing-token")
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthenticationError("malformed")

        # Choose the key and algorithm before any signature work; the header
        # is untrusted, so it only selects among what we already allow.
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationError("malformed") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or not isinstance(kid, str | None):
            raise AuthenticationError("malformed")

        # The shared secret is the only HMAC key there is: an HS256 token
        # "signed" with a published public key fails its signature here.
        if alg == "HS256" and self._hs256_key is not None:
            return _principal(self._decode(token, self._hs256_key, alg))

        if alg not in _ACCEPTED_ALGORITHMS:
            raise AuthenticationError("algorithm-not-allowed")
        entry = self._key(kid) if kid is not None else None
        if entry is None:
            raise AuthenticationError("unknown-key")
        if alg not in entry.algorithms:
            raise AuthenticationError("algorithm-not-allowed")

        claims = self._decode(token, entry.key.key, alg)

        return _principal(claims)

    def _key(self, kid: str) -> _VerificationKey | None:
        if self._remote is not None:
            return self._remote.get(kid)
        return self._keys.get(kid)

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway_s,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        # Most specific first: InvalidSignatureError is a DecodeError, and
        # every class here is an InvalidTokenError.
        except jwt.InvalidSignatureError as exc:
            raise AuthenticationError("bad-signature") from exc
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise AuthenticationError("not-yet-valid") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthenticationError("wrong-issuer") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthenticationError("wrong-audience") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise AuthenticationError("algorithm-not-allowed") from exc
        except jwt.DecodeError as exc:
            raise AuthenticationError("malformed") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError("invalid-claims") from exc


def _check_hs256_secret(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_HS256_SECRET_BYTES:
        raise ValueError(
            f"the HS256 secret must be at least {MIN_HS256_SECRET_BYTES} bytes"
        )

    # A public key configured as the secret would hand every holder of the
    # published key set the power to sign tokens.
    try:
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(key)
    except jwt.InvalidKeyError as exc:
        raise ValueError("the HS256 secret must not be a public key") from exc
    if key.lstrip().startswith(b"{"):
        try:
            looks_like_jwk = "kty" in json.loads(key)
        except (ValueError, TypeError):
            looks_like_jwk = False
        if looks_like_jwk:
            raise ValueError("the HS256 secret must not be a public key")

    return key


def _principal(claims: Mapping[str, Any]) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise AuthenticationError("invalid-claims", "the token subject is invalid")
    try:
        tenant = check_tenant(claims.get("tenant"))
        roles = check_roles(claims.get("roles"))
        audit_tenants = None
        if "audit_tenants" in claims:
            audit_tenants = check_audit_tenants(claims["audit_tenants"])
    except ValueError as exc:
        raise AuthenticationError("invalid-claims", str(exc)) from exc
    return Principal(
        subject=subject, tenant=tenant, roles=roles, audit_tenants=audit_tenants
    )


def _index_jwks(
    jwks: Mapping[str, Any], *, skip_unsupported: bool = False
) -> dict[str, _VerificationKey]:
    """Index a JWKS by kid, refusing keys that could not be used safely.

    ``skip_unsupported`` passes over keys of types we do not verify with
    (an identity provider may publish more than we use); anything unsafe,
    such as a private key or a duplicate kid, still refuses the whole set.
    """
    raw_keys = jwks.get("keys")
    if not isinstance(raw_keys, list):
        raise ValueError("a JWKS must have a 'keys' list")

    indexed: dict[str, _VerificationKey] = {}
    for raw in raw_keys:
        if not isinstance(raw, dict):
            raise ValueError("every JWKS entry must be an object")
        if raw.get("use", "sig") != "sig":
            continue  # encryption keys may share a published set
        kid = raw.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError("every signing key in the JWKS needs a 'kid'")
        if kid in indexed:
            raise ValueError(f"duplicate kid in JWKS: {kid!r}")
        if "d" in raw or "k" in raw:
            raise ValueError(f"key {kid!r}: a JWKS must hold public keys only")

        kty = raw.get("kty")
        curve = None if kty == "RSA" else raw.get("crv")
        allowed = _ALGORITHMS_BY_KEY.get((str(kty), curve))
        if allowed is None:
            if skip_unsupported:
                continue
            raise ValueError(f"key {kid!r}: unsupported key type {kty!r}/{curve!r}")
        if "alg" in raw:
            if raw["alg"] not in allowed:
                if skip_unsupported:
                    continue
                raise ValueError(f"key {kid!r}: alg {raw['alg']!r} does not fit")
            allowed = frozenset({raw["alg"]})

        try:
            key = jwt.PyJWK(raw, algorithm=min(allowed))
        except jwt.PyJWTError as exc:
            raise ValueError(f"key {kid!r}: {exc}") from exc
        indexed[kid] = _VerificationKey(key=key, algorithms=allowed)

    if not indexed:
        raise ValueError("the JWKS holds no signing keys")
    return indexed
