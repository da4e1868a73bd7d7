"""Process-wide clients the agents share, created on first use."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from streams import storage
from streams.clamd import CircuitBreaker, Clamd
from streams.config import get_settings
from streams.errors import IntegrityError
from streams.storage import ObjectStore


@lru_cache(maxsize=1)
def store() -> ObjectStore:
    return ObjectStore(get_settings().storage_root)


@lru_cache(maxsize=1)
def clamd() -> Clamd:
    settings = get_settings()
    breaker = CircuitBreaker(reset_s=settings.clamd_breaker_reset_s)
    return Clamd(
        settings.clamd_host, settings.clamd_port, settings.clamd_timeout_s, breaker
    )


def already_routed(tenant: str, upload_id: str) -> bool:
    """True when the route agent has put this upload in its final place.

    Delivery is at least once, so any stage may see an event again after
    the upload finished and its staging was removed. Stages before routing
    then have nothing left to do; the marker tells them so.
    """
    return store().exists(storage.routed_key(tenant, upload_id))


def staged(stage: dict[str, Any]) -> bool:
    """Whether a stage event still has its staged file to work on.

    False for a replay of a finished upload (skip it); IntegrityError when
    the staged file is gone although the upload never reached its place.
    """
    if store().exists(stage["staging_key"]):
        return True
    if already_routed(stage["tenant"], stage["upload_id"]):
        return False
    raise IntegrityError("staged file is missing and the upload was never routed")
