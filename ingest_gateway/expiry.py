"""Expiration (tus ``expiration``) and recovery of a predecessor's leases.

An unfinished upload expires ``SLUICE_UPLOAD_EXPIRY_S`` after its last
write (``Upload-Expires`` tells the client when). From that moment every
instance answers 410 for it, whether or not the state says so yet. Each
instance sweeps periodically and commits ``status=EXPIRED`` (under the
upload's lease, so a late PATCH and the sweep cannot both win) for expired
uploads: that record is the signal for whatever cleans up after them.

What cleans what:

- ``chunks`` and ``chunks.partial`` drop an expired upload's bytes by
  retention (7 days), like every other chunk.
- ``upload-state`` keeps the EXPIRED record (compacted, latest wins), so the
  upload keeps answering 410, not 404.
- Parts the assemble agent staged under ``staging/{tenant}/{upload}/``
  are the agents': the leader worker's cleanup (``agents/cleanup.py``)
  removes staging left idle for the same ``SLUICE_UPLOAD_EXPIRY_S``, so
  expired uploads' parts go, audited as ``upload.expired``.

On start, an instance takes over leases its previous run (same instance
name, another boot id) still held: that fences the dead run's open
transactions at once instead of after their timeout.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from ingest_gateway.session import Writers, acquire
from ingest_gateway.state import UNFINISHED
from streams.config import Settings
from streams.errors import ClientError, DependencyUnavailable
from streams.events import new_id, now_ms
from streams.logs import get_logger

log = get_logger(__name__)


def is_expired(state: dict[str, Any], at_ms: int | None = None) -> bool:
    """Whether state is an upload past its expiry (marked yet or not)."""
    if state["status"] == "EXPIRED":
        return True
    expires_at = state.get("expires_at")
    return (
        state["status"] in UNFINISHED
        and expires_at is not None
        and expires_at <= (at_ms or now_ms())
    )


async def expire(owner: Writers, upload_id: str) -> bool:
    """Mark one expired upload EXPIRED; False if it is busy or not expired."""

    def check(current: dict[str, Any] | None) -> dict[str, Any]:
        if current is None or current["status"] == "EXPIRED":
            raise _Skip()
        if not is_expired(current):
            raise _Skip()
        return current

    try:
        exclusive = await acquire(owner, upload_id, f"expiry-{new_id()}", check)
    except (_Skip, ClientError):
        return False
    try:
        state = exclusive.state
        await exclusive.commit(dict(state, status="EXPIRED"), release=True)
        log.info("upload.expired", upload_id=upload_id, offset=state["offset"])
    finally:
        await exclusive.release()
    return True


class _Skip(ClientError):
    """Nothing to do for this upload (internal)."""

    status = 409

    def __init__(self) -> None:
        super().__init__("nothing to do", reason="skip")


async def sweep_once(owner: Writers) -> int:
    """Expire every upload whose time has come; returns how many."""
    count = 0
    now = now_ms()
    for state in owner.states.snapshot():
        if state["status"] in UNFINISHED and is_expired(state, now):
            if await expire(owner, state["upload_id"]):
                count += 1
    return count


async def sweep_forever(owner: Writers, settings: Settings) -> None:
    """Sweep at SLUICE_GATEWAY_EXPIRY_SWEEP_S, jittered across instances."""
    while True:
        # Jitter keeps instances from sweeping the same uploads in step.
        await asyncio.sleep(settings.gateway_expiry_sweep_s * random.uniform(0.8, 1.2))  # noqa: S311
        try:
            await sweep_once(owner)
        except DependencyUnavailable as exc:
            log.warning("expiry.sweep_failed", error=str(exc))
        except Exception:
            log.exception("expiry.sweep_crashed")


async def recover(owner: Writers) -> None:
    """Take over and release leases a previous run of this instance held."""
    prefix = f"{owner.instance}/"
    for state in owner.states.snapshot():
        holder = state.get("lease_holder") or ""
        if not holder.startswith(prefix) or holder.startswith(f"{prefix}{owner.boot}/"):
            continue

        def check(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is None:
                raise _Skip()
            return current

        try:
            exclusive = await acquire(owner, state["upload_id"], "recovery", check)
        except (ClientError, DependencyUnavailable) as exc:
            log.warning("lease.recovery_skipped", error=str(exc))
            continue
        await exclusive.release()
        log.info("lease.recovered", upload_id=state["upload_id"])
