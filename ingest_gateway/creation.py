"""Creating uploads: creation, creation-with-upload, defer-length, concatenation.

Everything a request asks for is validated before anything is written. The
new upload's state is then committed under a lease (``ingest_gateway.session``)
so a body sent with the creation, or the copy of a final upload's parts,
belongs to this request alone.

Idempotency: with an ``Idempotency-Key`` the upload id is derived from the
tenant and the key, so a retried creation, on any instance, lands on the
same upload and gets it back (201, its current offset) instead of a second
one. Reusing a key for a different upload (other length, name or parts) is
refused with 422; a key whose upload was terminated, with 422 too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from ingest_gateway import tus
from ingest_gateway.errors import Gone, IdempotencyMismatch
from ingest_gateway.limits import tenant_limit
from streams.auth import Principal
from streams.config import Settings
from streams.errors import InvalidRequest, NotFound, PayloadTooLarge
from streams.events import deterministic_id, new_id, now_ms
from streams.guard import correlation_id_of
from streams.names import InvalidFilename, validate_filename

MAX_IDEMPOTENCY_KEY = 255


@dataclass(frozen=True)
class Creation:
    """A validated creation request."""

    length: int | None
    metadata: dict[str, str]
    filename: str
    concat: str
    parts: list[str]
    idempotency_key: str | None
    correlation_id: str
    has_body: bool


def parse(request: Request, settings: Settings, principal: Principal) -> Creation:
    """Validate a creation request's headers (400, 413)."""
    headers = request.headers
    concat = tus.parse_concat(headers.get("upload-concat"))
    kind, parts = concat if concat is not None else ("none", [])
    deferred = tus.parse_defer(headers.get("upload-defer-length"))
    length = tus.parse_length(headers.get("upload-length"), "Upload-Length")

    if kind == "final":
        if length is not None or deferred:
            raise InvalidRequest(
                "a final upload takes its length from its parts", reason="length"
            )
        if not parts:
            raise InvalidRequest("a final upload needs parts", reason="concat")
    elif length is None and not deferred:
        raise InvalidRequest("Upload-Length is required", reason="length")
    elif length is not None and deferred:
        raise InvalidRequest(
            "Upload-Length and Upload-Defer-Length exclude each other",
            reason="length",
        )
    if length is not None and length > tenant_limit(settings, principal.tenant):
        raise PayloadTooLarge("upload exceeds the size limit", reason="too-large")

    metadata = tus.parse_metadata(headers.get("upload-metadata"))
    raw_name = metadata.pop("filename", None) or metadata.pop("name", None)
    metadata.pop("name", None)
    if raw_name:
        try:
            filename = validate_filename(raw_name)
        except InvalidFilename as exc:
            raise InvalidRequest(str(exc), reason=f"filename-{exc.reason}") from exc
    elif kind == "partial":
        filename = "part"  # tus clients send the name with the final upload
    else:
        raise InvalidRequest("metadata must carry a filename", reason="filename")
    metadata["filename"] = filename

    key = headers.get("idempotency-key")
    if key is not None and not (
        0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isprintable()
    ):
        raise InvalidRequest("bad Idempotency-Key", reason="idempotency-key")

    has_body = headers.get("content-type") == tus.OFFSET_CONTENT_TYPE and (
        headers.get("content-length", "0") != "0"
        or "chunked" in headers.get("transfer-encoding", "")
    )
    if has_body and kind == "final":
        raise InvalidRequest("a final upload takes no body", reason="concat")
    return Creation(
        length=length,
        metadata=metadata,
        filename=filename,
        concat=kind.upper(),
        parts=parts,
        idempotency_key=key,
        correlation_id=correlation_id_of(request),
        has_body=has_body,
    )


def upload_id_for(principal: Principal, creation: Creation) -> str:
    """A new upload's id: derived from the Idempotency-Key when there is one."""
    if creation.idempotency_key is None:
        return new_id()
    return deterministic_id("idempotency", principal.tenant, creation.idempotency_key)


def resolve_parts(
    creation: Creation,
    principal: Principal,
    states: dict[str, dict[str, Any] | None],
) -> list[dict[str, Any]]:
    """A final upload's parts, each the caller's own complete partial upload."""
    resolved = []
    for upload_id in creation.parts:
        part = states.get(upload_id)
        if part is None or part["tenant"] != principal.tenant:
            raise NotFound("a part does not exist", reason="part-not-found")
        if part.get("concat") != "PARTIAL":
            raise InvalidRequest("a part is not a partial upload", reason="concat")
        if part["status"] == "EXPIRED":
            raise Gone("a part has expired", reason="part-expired")
        if part["status"] != "COMPLETE":
            raise InvalidRequest("a part is not complete", reason="part-incomplete")
        resolved.append(part)
    return resolved


def new_state(
    upload_id: str,
    creation: Creation,
    principal: Principal,
    settings: Settings,
    parts: list[dict[str, Any]],
) -> dict[str, Any]:
    """The first state of an upload."""
    now = now_ms()
    length = creation.length
    if creation.concat == "FINAL":
        length = sum(p["length"] for p in parts)
    return {
        "upload_id": upload_id,
        "tenant": principal.tenant,
        "owner": principal.subject,
        "status": "COMPLETE" if length == 0 else "CREATED",
        "offset": 0,
        "length": length,
        "filename": creation.filename,
        "metadata": creation.metadata,
        "correlation_id": creation.correlation_id,
        "created_at": now,
        "updated_at": now,
        "expires_at": (
            None if length == 0 else now + int(settings.upload_expiry_s * 1000)
        ),
        "idempotency_key": creation.idempotency_key,
        "lease_holder": None,
        "lease_expires_at": None,
        "concat": creation.concat,
        "parts": [p["upload_id"] for p in parts],
        "replay_from": None,
        "source": "tus",
    }


def check_replay(existing: dict[str, Any], creation: Creation) -> None:
    """A retried creation must ask for the same upload as the first."""
    same = (
        existing["filename"] == creation.filename
        and existing.get("concat", "NONE") == creation.concat
        and (creation.concat == "FINAL" or existing["length"] == creation.length)
        and list(existing.get("parts") or []) == creation.parts
    )
    if not same:
        raise IdempotencyMismatch(
            "Idempotency-Key was used for a different upload",
            reason="idempotency-key-reused",
        )
    if existing["status"] == "TERMINATED":
        raise IdempotencyMismatch(
            "Idempotency-Key names a terminated upload",
            reason="idempotency-key-spent",
        )
    if existing["status"] == "EXPIRED":
        raise Gone("Idempotency-Key names an expired upload", reason="expired")
