"""Quarantine: infected and suspicious files, encrypted at rest, for operators.

Quarantined bytes live under ``quarantine/{tenant}/{upload_id}`` and are
sealed with AES-256-GCM in 1 MiB blocks, so a file of any size is encrypted
and decrypted with bounded memory and nothing on disk can be opened or
executed by accident. The sealed format::

    b"SLQ1" | nonce prefix (8 bytes) | block*
    block = length (4 bytes, big-endian) | AES-GCM(ciphertext | tag)

Block ``i`` uses nonce ``prefix || i`` (32-bit counter) and authenticates
the object key and whether it is the last block, so blocks cannot be
reordered, moved to another object, or cut off at the end unnoticed.

The key comes from ``SLUICE_QUARANTINE_KEY`` (base64 of 32 bytes) or is
generated once under ``SLUICE_HOME/keys/quarantine.key`` (mode 0600).
Operators list, release (decrypt into the tenant's clean area) and delete
quarantined files through ``sluice quarantine``; each action is audited.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from streams import storage
from streams.config import Settings
from streams.errors import IntegrityError, NotFound
from streams.events import now_ms
from streams.storage import ObjectStore

MAGIC = b"SLQ1"
BLOCK = 1024 * 1024
TAG = 16
KEY_FILE = "quarantine.key"
MAX_BLOCKS = 2**32


def load_key(settings: Settings) -> bytes:
    """The quarantine key: configured, or generated once under the keys dir."""
    if settings.quarantine_key is not None:
        key = base64.b64decode(settings.quarantine_key.get_secret_value())
        if len(key) != 32:
            raise ValueError("SLUICE_QUARANTINE_KEY must be base64 of 32 bytes")
        return key
    path = settings.keys_dir / KEY_FILE
    if not path.exists():
        _create_key(path)
    key = base64.b64decode(path.read_bytes())
    if len(key) != 32:
        raise ValueError(f"{path} does not hold a 32-byte key")
    return key


def _create_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(base64.b64encode(AESGCM.generate_key(bit_length=256)))
    try:
        os.link(tmp, path)  # never replaces a key another process just made
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _aad(object_key: str, last: bool) -> bytes:
    return object_key.encode("utf-8") + (b"\x01" if last else b"\x00")


def _rebuffer(blocks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Re-cut a stream into pieces of exactly ``size`` (the last may be short)."""
    pending = bytearray()
    for block in blocks:
        pending.extend(block)
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    yield bytes(pending)


def seal(blocks: Iterable[bytes], key: bytes, object_key: str) -> Iterator[bytes]:
    """Encrypt a byte stream into the sealed format, one block at a time."""
    cipher = AESGCM(key)
    prefix = os.urandom(8)
    yield MAGIC + prefix
    pieces = _rebuffer(blocks, BLOCK)
    current = next(pieces)
    for index in range(MAX_BLOCKS):
        following = next(pieces, None)
        last = following is None
        nonce = prefix + struct.pack(">I", index)
        sealed = cipher.encrypt(nonce, current, _aad(object_key, last))
        yield struct.pack(">I", len(sealed)) + sealed
        if following is None:
            return
        current = following
    raise IntegrityError("file too large to seal")


def unseal(blocks: Iterable[bytes], key: bytes, object_key: str) -> Iterator[bytes]:
    """Decrypt a sealed stream; IntegrityError if it was altered or cut short."""
    cipher = AESGCM(key)
    buffer = bytearray()
    stream = iter(blocks)

    def need(count: int) -> bytes:
        while len(buffer) < count:
            piece = next(stream, None)
            if piece is None:
                raise IntegrityError("sealed file is truncated")
            buffer.extend(piece)
        taken = bytes(buffer[:count])
        del buffer[:count]
        return taken

    header = need(len(MAGIC) + 8)
    if header[: len(MAGIC)] != MAGIC:
        raise IntegrityError("not a sealed quarantine file")
    prefix = header[len(MAGIC) :]
    for index in range(MAX_BLOCKS):
        (length,) = struct.unpack(">I", need(4))
        if length < TAG or length > BLOCK + TAG:
            raise IntegrityError("sealed block has an impossible length")
        sealed = need(length)
        nonce = prefix + struct.pack(">I", index)
        # The last block says so in its authenticated data: try "not last"
        # first, then "last", and require the stream to end after it.
        try:
            yield cipher.decrypt(nonce, sealed, _aad(object_key, False))
            continue
        except InvalidTag:
            pass
        try:
            plain = cipher.decrypt(nonce, sealed, _aad(object_key, True))
        except InvalidTag as exc:
            raise IntegrityError("sealed block failed authentication") from exc
        if buffer or next(stream, None):
            raise IntegrityError("data after the last sealed block")
        yield plain
        return
    raise IntegrityError("sealed file has too many blocks")


def put(
    objects: ObjectStore, source_key: str, destination: str, key: bytes
) -> storage.Digest:
    """Seal the object at source_key into destination; digest the plaintext."""
    digest = hashlib.sha256()
    size = 0

    def plain() -> Iterator[bytes]:
        nonlocal size
        for block in objects.read_blocks(source_key):
            digest.update(block)
            size += len(block)
            yield block

    objects.write_stream(destination, seal(plain(), key, destination))
    return storage.Digest(size=size, sha256=digest.hexdigest())


def read(objects: ObjectStore, object_key: str, key: bytes) -> Iterator[bytes]:
    """The plaintext of a quarantined object, streamed."""
    return unseal(objects.read_blocks(object_key), key, object_key)


@dataclass(frozen=True)
class Entry:
    """One quarantined upload as operators see it."""

    tenant: str
    upload_id: str
    verdict: str
    reason: str
    sha256: str
    stored_bytes: int


def result_of(objects: ObjectStore, tenant: str, upload_id: str) -> dict[str, Any]:
    """The upload's FileResult as the route agent recorded it (or {})."""
    try:
        raw = objects.read_head(storage.routed_key(tenant, upload_id), 1024 * 1024)
    except FileNotFoundError:
        return {}
    marker = json.loads(raw or b"{}")
    result = marker.get("result") if isinstance(marker, dict) else None
    return result if isinstance(result, dict) else {}


def _record(objects: ObjectStore, result: dict[str, Any]) -> None:
    key = storage.routed_key(result["tenant"], result["upload_id"])
    objects.put(key, json.dumps({"result": result}).encode("utf-8"))


def entries(objects: ObjectStore, tenant: str | None = None) -> list[Entry]:
    """Every quarantined upload, of one tenant or of all."""
    tenants = [tenant] if tenant else sorted(objects.list_sizes("quarantine"))
    found = []
    for name in tenants:
        for upload_id, size in sorted(objects.list_sizes(f"quarantine/{name}").items()):
            if upload_id.endswith(".partial"):
                continue
            marker = result_of(objects, name, upload_id)
            found.append(
                Entry(
                    tenant=name,
                    upload_id=upload_id,
                    verdict=str(marker.get("verdict", "")),
                    reason=str(marker.get("reason", "")),
                    sha256=str(marker.get("sha256", "")),
                    stored_bytes=size,
                )
            )
    return found


def release(
    objects: ObjectStore, tenant: str, upload_id: str, key: bytes, actor: str
) -> dict[str, Any]:
    """Decrypt into the tenant's clean area; return the restated result."""
    source = storage.quarantine_key(tenant, upload_id)
    result = result_of(objects, tenant, upload_id)
    if not result or not objects.exists(source):
        raise NotFound("no such quarantined upload", reason="not-found")

    staging = f"{storage.staging_prefix(tenant, upload_id)}/released"
    written = objects.write_stream(staging, read(objects, source, key))
    if written.sha256 != result["sha256"]:
        objects.delete_prefix(storage.staging_prefix(tenant, upload_id))
        raise IntegrityError("quarantined bytes do not match their recorded digest")
    destination = storage.content_key(tenant, written.sha256)
    if not objects.exists(destination):
        objects.copy(staging, destination)
    objects.delete_prefix(storage.staging_prefix(tenant, upload_id))

    released = dict(
        result,
        location=destination,
        reason=f"released from quarantine by {actor} ({result['reason']})",
        completed_at=now_ms(),
    )
    _record(objects, released)
    objects.delete_prefix(source)
    return released


def delete(
    objects: ObjectStore, tenant: str, upload_id: str, actor: str
) -> dict[str, Any]:
    """Remove a quarantined upload's bytes for good; return the restated result."""
    source = storage.quarantine_key(tenant, upload_id)
    result = result_of(objects, tenant, upload_id)
    if not result or not objects.exists(source):
        raise NotFound("no such quarantined upload", reason="not-found")
    deleted = dict(
        result,
        location="",
        reason=f"deleted from quarantine by {actor} ({result['reason']})",
        completed_at=now_ms(),
    )
    _record(objects, deleted)
    objects.delete_prefix(source)
    return deleted
