"""Helpers shared by every producer of events: ids, clocks, Kafka headers.

The correlation id is minted by the gateway for each upload (or taken from the
client's X-Correlation-ID) and travels in the ``correlation-id`` header from
the first chunk to the last audit event.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping

CORRELATION_ID = "correlation-id"
TENANT = "tenant"
UPLOAD_ID = "upload-id"
REPLAY_OF = "replay-of"

_AUDIT_NAMESPACE = uuid.UUID("5f0c5e1c-6a57-4c36-9a10-0b1d3f5a2c11")


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    """A fresh random identifier (uploads, correlation ids)."""
    return uuid.uuid4().hex


def deterministic_id(*parts: str) -> str:
    """Same inputs, same id: replays restate an event instead of repeating it."""
    return uuid.uuid5(_AUDIT_NAMESPACE, "\x1f".join(parts)).hex


def make_headers(
    *, correlation_id: str, tenant: str, upload_id: str | None = None
) -> list[tuple[str, str | bytes | None]]:
    headers: list[tuple[str, str | bytes | None]] = [
        (CORRELATION_ID, correlation_id.encode()),
        (TENANT, tenant.encode()),
    ]
    if upload_id is not None:
        headers.append((UPLOAD_ID, upload_id.encode()))
    return headers


def headers_to_dict(
    headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes] | None,
) -> dict[str, str]:
    """Kafka headers as text, whichever client produced them."""
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for key, value in items:
        if value is not None:
            out[key] = value.decode("utf-8", "replace")
    return out
