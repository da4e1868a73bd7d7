"""Process-wide clients the agents share, created on first use."""

from __future__ import annotations

from functools import lru_cache

from streams.clamd import Clamd
from streams.config import get_settings
from streams.storage import ObjectStore


@lru_cache(maxsize=1)
def store() -> ObjectStore:
    return ObjectStore(get_settings().storage_root)


@lru_cache(maxsize=1)
def clamd() -> Clamd:
    settings = get_settings()
    return Clamd(settings.clamd_host, settings.clamd_port, settings.clamd_timeout_s)


def already_routed(tenant: str, upload_id: str, sha256: str) -> bool:
    """True when an upload's bytes already sit in their final place.

    A stage replayed after the route agent removed staging (possible when
    Faust's exactly-once misfires after a crash) then has nothing left to do.
    """
    from streams import storage

    objects = store()
    return objects.exists(storage.quarantine_key(tenant, upload_id)) or (
        bool(sha256) and objects.exists(storage.content_key(tenant, sha256))
    )
