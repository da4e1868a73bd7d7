"""API keys for producer services, stored only as salted scrypt hashes.

A key reads ``sk_<key_id>_<secret>``: ``key_id`` is 16 hex digits that name
the stored record, ``secret`` is 32 random bytes, base64url. The plaintext is
shown once, when the key is created or rotated; the store keeps the scrypt
hash, the tenant, the roles, the expiry and the revocation or rotation.

Keys live in ``SLUICE_HOME/keys/service_keys.json`` (mode 0600, replaced
atomically, writers serialised by a lock file). A verifying process rereads
the file when it changes, so a revocation made by ``sluice keys revoke`` in
another process takes effect on the next request.

:func:`authenticate` is the HTTP layer's entry point: it takes the
``Authorization`` header value and accepts either a JWT or a service key.

Keys carry only the roles of producer services
(:data:`streams.permissions.SERVICE_KEY_ROLES`: uploader, reader, auditor);
operator and admin are for people, through the identity provider.

Limits: the store is a local file, so several gateway hosts need a shared
or replicated ``SLUICE_HOME/keys``; the first verification of each key in a
process costs one scrypt (about 0.1 s on a small host), later ones are
cached in memory. After five wrong secrets for one key id within a minute,
that id's uncached attempts are refused without scrypt for the rest of the
minute, so a known key id cannot be used to burn CPU; a holder whose key is
already cached in the process is not affected.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from streams.auth import (
    AuthenticationError,
    Principal,
    TokenVerifier,
    check_roles,
    check_tenant,
    parse_bearer,
)
from streams.permissions import SERVICE_KEY_ROLES

if TYPE_CHECKING:
    from streams.config import Settings

__all__ = [
    "KEY_PREFIX",
    "IssuedKey",
    "ServiceKey",
    "ServiceKeyStore",
    "UnknownServiceKey",
    "authenticate",
]

KEY_PREFIX: Final = "sk_"
STORE_FILE: Final = "service_keys.json"
STORE_VERSION: Final = 1

SECRET_BYTES: Final = 32
DEFAULT_TTL_S: Final = 90 * 24 * 3600
DEFAULT_GRACE_S: Final = 24 * 3600
MAX_DESCRIPTION_CHARS: Final = 200

# token_urlsafe(32) is 43 characters; the upper bound only limits work.
_API_KEY_RE: Final = re.compile(r"sk_([0-9a-f]{16})_([A-Za-z0-9_-]{43,128})")

# scrypt at 16 MiB, about 0.1 s. The secret has 256 bits of entropy, so this
# is defence in depth for a leaked file, not the only barrier to guessing.
_SCRYPT_N: Final = 2**14
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1
_SCRYPT_MAX_N: Final = 2**17  # refuses a hand-edited file that would stall us
_SALT_BYTES: Final = 16
_HASH_BYTES: Final = 32

# Verified secrets per key id, as SHA-256, so only a key's first request in
# a process pays for scrypt. Bounded so made-up key ids cannot grow it.
_CACHE_LIMIT: Final = 4096

# Wrong secrets tolerated per key id and window before scrypt is skipped.
_FAILURE_LIMIT: Final = 5
_FAILURE_WINDOW_S: Final = 60.0


class UnknownServiceKey(LookupError):
    """No service key has the given id."""


@dataclass(frozen=True)
class ServiceKey:
    """What the store knows about one key, without its secret."""

    key_id: str
    tenant: str
    roles: frozenset[str]
    created_at: int
    expires_at: int
    revoked_at: int | None = None
    rotated_to: str | None = None
    description: str = ""

    def state(self, now: float) -> str:
        """One of ``active``, ``rotating`` (in grace), ``expired``, ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        return "rotating" if self.rotated_to else "active"


@dataclass(frozen=True)
class IssuedKey:
    """A newly issued key: the plaintext ``api_key`` exists only here."""

    api_key: str = field(repr=False)
    key: ServiceKey


@dataclass(frozen=True)
class _Record:
    key: ServiceKey
    hash: Mapping[str, Any]


class ServiceKeyStore:
    """Create, list, revoke, rotate and verify service keys in a JSON file."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._signature: tuple[int, ...] | None = None
        self._verified: dict[str, bytes] = {}
        self._failures: dict[str, tuple[int, float]] = {}  # count, window start

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceKeyStore:
        """The store under ``SLUICE_HOME/keys``."""
        return cls(settings.keys_dir / STORE_FILE)

    def create(
        self,
        tenant: str,
        roles: Iterable[str],
        *,
        ttl_s: int = DEFAULT_TTL_S,
        description: str = "",
    ) -> IssuedKey:
        """Issue a key for ``tenant`` with ``roles``, valid for ``ttl_s``."""
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        tenant = check_tenant(tenant)
        role_set = check_roles(list(roles))
        if not role_set <= SERVICE_KEY_ROLES:
            raise ValueError(
                f"roles of a service key must be among {sorted(SERVICE_KEY_ROLES)}"
            )
        description = _check_description(description)

        with self._locked() as records:
            issued = self._issue(records, tenant, role_set, ttl_s, description)
            self._save(records)

        return issued

    def list(self, tenant: str | None = None) -> tuple[ServiceKey, ...]:
        """Every key (of ``tenant``, if given), oldest first."""
        keys = (record.key for record in self._current().values())
        return tuple(
            sorted(
                (key for key in keys if tenant is None or key.tenant == tenant),
                key=lambda key: (key.created_at, key.key_id),
            )
        )

    def get(self, key_id: str) -> ServiceKey:
        """The key named ``key_id``, or raise UnknownServiceKey."""
        record = self._current().get(key_id)
        if record is None:
            raise UnknownServiceKey(key_id)
        return record.key

    def revoke(self, key_id: str) -> ServiceKey:
        """Refuse ``key_id`` from now on; revoking twice keeps the first time."""
        with self._locked() as records:
            record = _lookup(records, key_id)
            key = record.key
            if key.revoked_at is None:
                key = replace(key, revoked_at=int(self._clock()))
                records[key_id] = replace(record, key=key)
                self._save(records)

        return key

    def rotate(
        self,
        key_id: str,
        *,
        grace_s: int = DEFAULT_GRACE_S,
        ttl_s: int = DEFAULT_TTL_S,
    ) -> IssuedKey:
        """Issue a successor to ``key_id``; the old key expires after ``grace_s``."""
        if grace_s < 0:
            raise ValueError("grace_s must not be negative")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")

        with self._locked() as records:
            old = _lookup(records, key_id)
            now = int(self._clock())
            state = old.key.state(now)
            if state != "active":
                raise ValueError(f"key {key_id} is {state} and cannot be rotated")

            issued = self._issue(
                records, old.key.tenant, old.key.roles, ttl_s, old.key.description
            )
            # min(): a grace period never extends the old key's life.
            retired = replace(
                old.key,
                expires_at=min(old.key.expires_at, now + grace_s),
                rotated_to=issued.key.key_id,
            )
            records[key_id] = replace(old, key=retired)
            self._save(records)

        return issued

    def verify(self, api_key: str) -> Principal:
        """The principal of a valid service key, or raise AuthenticationError."""
        match = _API_KEY_RE.fullmatch(api_key)
        if match is None:
            raise AuthenticationError("malformed")
        key_id, secret = match.groups()

        # Unknown id and wrong secret look alike to the caller.
        record = self._current().get(key_id)
        if record is None or not self._secret_matches(key_id, record, secret):
            raise AuthenticationError("invalid-key")

        # State is told only to a caller who proved they hold the secret.
        state = record.key.state(self._clock())
        if state == "revoked":
            raise AuthenticationError("key-revoked")
        if state == "expired":
            raise AuthenticationError("key-expired")

        return Principal(
            subject=f"service:{key_id}",
            tenant=record.key.tenant,
            roles=record.key.roles,
        )

    def _secret_matches(self, key_id: str, record: _Record, secret: str) -> bool:
        fast = hashlib.sha256(secret.encode("ascii")).digest()
        cached = self._verified.get(key_id)
        if cached is not None and hmac.compare_digest(cached, fast):
            return True
        if self._throttled(key_id):
            return False

        try:
            expected = base64.b64decode(record.hash["hash"], validate=True)
            derived = _derive(secret, record.hash)
        except (KeyError, TypeError, ValueError):
            return False  # a damaged record verifies nothing
        if not hmac.compare_digest(derived, expected):
            self._count_failure(key_id)
            return False

        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.clear()
        self._verified[key_id] = fast
        return True

    def _throttled(self, key_id: str) -> bool:
        count, since = self._failures.get(key_id, (0, 0.0))
        return count >= _FAILURE_LIMIT and self._clock() - since < _FAILURE_WINDOW_S

    def _count_failure(self, key_id: str) -> None:
        now = self._clock()
        count, since = self._failures.get(key_id, (0, now))
        if now - since >= _FAILURE_WINDOW_S:
            count, since = 0, now
        if len(self._failures) >= _CACHE_LIMIT:
            self._failures.clear()
        self._failures[key_id] = (count + 1, since)

    def _issue(
        self,
        records: dict[str, _Record],
        tenant: str,
        roles: frozenset[str],
        ttl_s: int,
        description: str,
    ) -> IssuedKey:
        key_id = secrets.token_hex(8)
        while key_id in records:
            key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(SECRET_BYTES)
        now = int(self._clock())

        key = ServiceKey(
            key_id=key_id,
            tenant=tenant,
            roles=roles,
            created_at=now,
            expires_at=now + ttl_s,
            description=description,
        )
        records[key_id] = _Record(key=key, hash=_new_hash(secret))
        return IssuedKey(api_key=f"{KEY_PREFIX}{key_id}_{secret}", key=key)

    def _current(self) -> dict[str, _Record]:
        """The records on disk, reread only when the file has changed."""
        signature = _file_signature(self.path)
        if signature != self._signature:
            self._records = _load(self.path)
            self._signature = signature
        return self._records

    @contextmanager
    def _locked(self) -> Iterator[dict[str, _Record]]:
        """Records read fresh under an exclusive lock, for read-modify-write."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield _load(self.path)
        finally:
            os.close(fd)  # closing releases the lock

    def _save(self, records: Mapping[str, _Record]) -> None:
        document = {
            "version": STORE_VERSION,
            "keys": {key_id: _dump(record) for key_id, record in records.items()},
        }
        data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")
        _write_private(self.path, data)
        # Our own write is the newest state; no need to reread it.
        self._records = dict(records)
        self._signature = _file_signature(self.path)


def authenticate(
    header_value: str | None,
    verifier: TokenVerifier,
    service_keys: ServiceKeyStore | None = None,
) -> Principal:
    """The principal of an ``Authorization: Bearer`` JWT or service key."""
    token = parse_bearer(header_value)

    # A JWT starts with its base64url header ("eyJ"), never with "sk_".
    if token.startswith(KEY_PREFIX):
        if service_keys is None:
            raise AuthenticationError("invalid-key")
        return service_keys.verify(token)

    return verifier.verify(token)


def _lookup(records: Mapping[str, _Record], key_id: str) -> _Record:
    record = records.get(key_id)
    if record is None:
        raise UnknownServiceKey(key_id)
    return record


def _check_description(description: str) -> str:
    if len(description) > MAX_DESCRIPTION_CHARS or not description.isprintable():
        raise ValueError(
            f"description must be printable and at most {MAX_DESCRIPTION_CHARS} chars"
        )
    return description


def _new_hash(secret: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "kdf": "scrypt",
        "n": _SCRYPT_N,
        "r": _SCRYPT_R,
        "p": _SCRYPT_P,
        "salt": base64.b64encode(os.urandom(_SALT_BYTES)).decode("ascii"),
    }
    params["hash"] = base64.b64encode(_derive(secret, params)).decode("ascii")
    return params


def _derive(secret: str, params: Mapping[str, Any]) -> bytes:
    n, r, p = params["n"], params["r"], params["p"]
    if params["kdf"] != "scrypt" or not all(isinstance(v, int) for v in (n, r, p)):
        raise ValueError("unsupported key hash")
    if not (2 <= n <= _SCRYPT_MAX_N and 1 <= r <= 16 and 1 <= p <= 4):
        raise ValueError("key hash parameters out of range")
    return hashlib.scrypt(
        secret.encode("ascii"),
        salt=base64.b64decode(params["salt"], validate=True),
        n=n,
        r=r,
        p=p,
        maxmem=256 * r * n,  # twice scrypt's 128*r*n working set
        dklen=_HASH_BYTES,
    )


def _dump(record: _Record) -> dict[str, Any]:
    key = record.key
    return {
        "tenant": key.tenant,
        "roles": sorted(key.roles),
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "rotated_to": key.rotated_to,
        "description": key.description,
        "hash": dict(record.hash),
    }


def _load(path: Path) -> dict[str, _Record]:
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return {}

    try:
        document = json.loads(text)
        if document.get("version") != STORE_VERSION:
            raise ValueError(f"unsupported version {document.get('version')!r}")
        return {key_id: _parse(key_id, raw) for key_id, raw in document["keys"].items()}
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # Refuse to guess: a damaged store must not silently lose revocations.
        raise ValueError(f"{path} is not a valid service key store: {exc}") from exc


def _parse(key_id: str, raw: Mapping[str, Any]) -> _Record:
    if not re.fullmatch(r"[0-9a-f]{16}", key_id):
        raise ValueError(f"bad key id {key_id!r}")
    key = ServiceKey(
        key_id=key_id,
        tenant=check_tenant(raw["tenant"]),
        roles=check_roles(raw["roles"]),
        created_at=int(raw["created_at"]),
        expires_at=int(raw["expires_at"]),
        revoked_at=None if raw["revoked_at"] is None else int(raw["revoked_at"]),
        rotated_to=raw.get("rotated_to"),
        description=str(raw.get("description", "")),
    )
    if not isinstance(key.rotated_to, str | None):
        raise ValueError(f"key {key_id}: rotated_to must be a key id or null")
    if not isinstance(raw["hash"], dict):
        raise ValueError(f"key {key_id}: hash must be an object")
    return _Record(key=key, hash=raw["hash"])


def _file_signature(path: Path) -> tuple[int, ...] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _write_private(path: Path, data: bytes) -> None:
    # mkstemp creates the file 0600, so the hashes are never readable by
    # others, not even between write and rename.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as tmp:
            os.fchmod(tmp.fileno(), 0o600)
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        os.unlink(tmp_name)
        raise

    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
