"""tus 1.0 protocol details that do not depend on Kafka: headers and parsing."""

from __future__ import annotations

import base64
import hashlib
import zlib
from email.utils import formatdate
from typing import Protocol
from urllib.parse import urlsplit

from streams.errors import InvalidRequest

TUS_VERSION = "1.0.0"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
)
CHECKSUM_ALGORITHMS = ("sha256", "sha1", "md5", "crc32")
_DIGEST_BYTES = {"sha256": 32, "sha1": 20, "md5": 16, "crc32": 4}
# An upload's metadata rides in every state record and HEAD answer: bound it
# well under Kafka's record size and what HTTP clients read as one header.
MAX_METADATA_BYTES = 8 * 1024
MAX_CONCAT_PARTS = 1000
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"

# Headers browsers' tus clients must be able to read from responses.
EXPOSED_HEADERS = (
    "Location, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, "
    "Tus-Checksum-Algorithm, Upload-Offset, Upload-Length, Upload-Metadata, "
    "Upload-Expires, Upload-Concat, Upload-Defer-Length, Retry-After, "
    "X-Correlation-ID"
)


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc32:
    """crc32 behind the hashlib interface, big-endian digest as tusd sends it."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


def parse_metadata(header: str | None) -> dict[str, str]:
    """Decode Upload-Metadata strictly: unique keys, base64 values, UTF-8."""
    if header is None or not header.strip():
        return {}
    if len(header) > MAX_METADATA_BYTES:
        raise InvalidRequest(
            f"Upload-Metadata is over {MAX_METADATA_BYTES} bytes",
            reason="metadata-too-large",
        )
    metadata: dict[str, str] = {}
    for pair in header.split(","):
        parts = pair.strip().split(" ")
        if len(parts) not in (1, 2) or not parts[0]:
            raise InvalidRequest("malformed Upload-Metadata", reason="metadata")
        key = parts[0]
        if key in metadata:
            raise InvalidRequest(f"duplicate metadata key {key!r}", reason="metadata")
        if not key.isascii() or not key.isprintable():
            raise InvalidRequest(
                "metadata keys must be printable ASCII", reason="metadata"
            )
        value = ""
        if len(parts) == 2:
            try:
                value = base64.b64decode(parts[1], validate=True).decode("utf-8")
            except ValueError as exc:  # binascii.Error, non-ASCII, not UTF-8
                raise InvalidRequest(
                    f"metadata value of {key!r} is not base64 UTF-8",
                    reason="metadata",
                ) from exc
        metadata[key] = value
    return metadata


def encode_metadata(metadata: dict[str, str]) -> str:
    return ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}" if v else k
        for k, v in metadata.items()
    )


def parse_checksum(header: str | None) -> tuple[Hasher, bytes] | None:
    """Upload-Checksum as (hasher, expected digest); 400 if unsupported."""
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise InvalidRequest(
            f"unsupported checksum algorithm {algorithm!r}", reason="checksum-algorithm"
        )
    try:
        expected = base64.b64decode(encoded, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII characters
        raise InvalidRequest("checksum is not base64", reason="checksum") from exc
    if len(expected) != _DIGEST_BYTES[algorithm]:
        raise InvalidRequest(
            f"a {algorithm} checksum is {_DIGEST_BYTES[algorithm]} bytes",
            reason="checksum",
        )
    hasher: Hasher = _Crc32() if algorithm == "crc32" else hashlib.new(algorithm)
    return hasher, expected


def parse_length(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise InvalidRequest(f"{name} must be a non-negative integer", reason="length")
    return int(value)


def parse_concat(header: str | None) -> tuple[str, list[str]] | None:
    """Upload-Concat as ("partial", []) or ("final", [upload ids]); 400 if bad.

    Final uploads name their parts by URL, absolute or as a path; the upload
    id is the URL's last path segment.
    """
    if header is None:
        return None
    value = header.strip()
    if value == "partial":
        return "partial", []
    kind, _, urls = value.partition(";")
    if kind != "final" or not urls.strip():
        raise InvalidRequest("malformed Upload-Concat", reason="concat")
    ids = []
    for url in urls.split():
        path = urlsplit(url).path.rstrip("/")
        upload_id = path.rsplit("/", 1)[-1]
        if not path.startswith(("/files/", "files/")) and "/files/" not in path:
            raise InvalidRequest("Upload-Concat names a foreign URL", reason="concat")
        if not upload_id.isalnum():
            raise InvalidRequest("Upload-Concat names a bad upload", reason="concat")
        ids.append(upload_id)
    if len(ids) > MAX_CONCAT_PARTS:
        raise InvalidRequest(
            f"a final upload takes at most {MAX_CONCAT_PARTS} parts", reason="concat"
        )
    return "final", ids


def parse_defer(header: str | None) -> bool:
    """Upload-Defer-Length: absent, or exactly 1."""
    if header is None:
        return False
    if header.strip() != "1":
        raise InvalidRequest("Upload-Defer-Length must be 1", reason="defer-length")
    return True


def http_date(epoch_ms: int) -> str:
    """An RFC 9110 date, as Upload-Expires carries it."""
    return formatdate(epoch_ms / 1000, usegmt=True)
