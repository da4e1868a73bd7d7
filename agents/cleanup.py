"""Cleanup: staging left behind by uploads that were abandoned part-way.

An upload whose final chunk never arrives keeps its parts under
``staging/{tenant}/{upload_id}/``. Once nothing has been written there for
``upload_expiry_s`` (the gateway's expiry; keep the two equal) and the
upload was never routed, the leader worker deletes it and records an
``upload.expired`` audit event. Operators can run the same sweep with
``sluice staging sweep``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import faust

from agents.deps import store
from streams import codec, storage, topics
from streams.config import Settings
from streams.events import deterministic_id, now_ms
from streams.logs import get_logger
from streams.pipeline import Sender
from streams.storage import ObjectStore

log = get_logger(__name__)


@dataclass(frozen=True)
class Expired:
    """One abandoned upload removed from staging."""

    tenant: str
    upload_id: str
    idle_s: float


def sweep(
    objects: ObjectStore, expiry_s: float, now: float | None = None
) -> list[Expired]:
    """Delete the staging of every upload idle longer than expiry_s."""
    now = time.time() if now is None else now
    expired = []
    for tenant in sorted(objects.list_sizes("staging")):
        for upload_id in sorted(objects.list_sizes(f"staging/{tenant}")):
            prefix = storage.staging_prefix(tenant, upload_id)
            changed = objects.newest_change(prefix)
            if changed is None or now - changed < expiry_s:
                continue
            if objects.exists(storage.routed_key(tenant, upload_id)):
                continue  # routed; route removes its staging itself
            objects.delete_prefix(prefix)
            expired.append(Expired(tenant, upload_id, now - changed))
            log.info("upload.expired", tenant=tenant, upload_id=upload_id)
    return expired


def audit_event(item: Expired) -> dict[str, object]:
    return {
        "event_id": deterministic_id(item.upload_id, "upload.expired"),
        "occurred_at": now_ms(),
        "tenant": item.tenant,
        "actor": "system:cleanup",
        "action": "upload.expired",
        "target": item.upload_id,
        "outcome": "deleted",
        "correlation_id": "",
        "detail": {"idle_s": str(int(item.idle_s))},
    }


def register(app: faust.App, sender: Sender, settings: Settings) -> None:
    @app.timer(interval=settings.cleanup_interval_s, on_leader=True)
    async def cleanup() -> None:
        expired = await asyncio.to_thread(sweep, store(), settings.upload_expiry_s)
        for item in expired:
            event = audit_event(item)
            await sender.send(
                topics.AUDIT,
                item.tenant.encode(),
                codec.encode("AuditEvent", event),
                {"tenant": item.tenant, "upload-id": item.upload_id},
            )
