"""Dedupe agent: the first upload of each (tenant, sha256) owns the bytes.

Clean content is stored under a content-addressed key, so the bytes exist
once per tenant. This agent keeps the ledger of who references them, in two
Faust tables changelogged to Kafka:

- ``dedupe-content``: tenant:sha256 -> {"owner": first upload, "refs": n},
- ``dedupe-claims``: upload id -> tenant:sha256, one entry per upload, which
  makes counting idempotent: a replayed upload finds its claim and counts
  nothing twice.

Later uploads of the same bytes are marked ``duplicate_of`` the owner.
Reference counts are what a deletion of content must consult (the bytes go
when the last reference does). An LRU cache of content entries sits in front
of the table, so a hot digest costs no store lookup; it is dropped whenever
partitions are revoked, since another worker may change those entries.

Input is keyed by tenant:sha256, so every entry a table holds is read and
written on the partition that owns the digest.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import faust
from cachetools import LRUCache

from agents.route import verdict_of
from streams import codec, topics
from streams.config import Settings
from streams.events import headers_to_dict, now_ms
from streams.logs import get_logger
from streams.pipeline import Output, Sender, Step, process, tenant_matches

log = get_logger(__name__)


def is_storable(stage: dict[str, Any]) -> bool:
    """Only content that will be stored as clean is deduplicated."""
    return verdict_of(stage)[0] == "CLEAN"


def decide(stage: dict[str, Any], first_owner: str | None) -> dict[str, Any]:
    duplicate_of = None
    if first_owner is not None and first_owner != stage["upload_id"]:
        duplicate_of = first_owner
    return dict(
        stage,
        event_id=f"{stage['upload_id']}:DEDUPLICATED",
        stage="DEDUPLICATED",
        duplicate_of=duplicate_of,
        occurred_at=now_ms(),
    )


class Ledger:
    """Owners and reference counts of content, with an LRU cache in front."""

    def __init__(self, content: Any, claims: Any, cache_size: int) -> None:
        self._content = content
        self._claims = claims
        self._cache: LRUCache[str, dict[str, Any]] = LRUCache(maxsize=cache_size)

    def forget_cache(self) -> None:
        self._cache.clear()

    def entry(self, key: str) -> dict[str, Any] | None:
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        raw = self._content.get(key)
        if raw is None:
            return None
        entry: dict[str, Any] = json.loads(raw)
        self._cache[key] = entry
        return entry

    def claim(self, key: str, upload_id: str) -> str:
        """Record upload_id as a reference to key (once); return the owner."""
        entry = self.entry(key)
        if self._claims.get(upload_id) == key and entry is not None:
            return str(entry["owner"])  # a replay: already counted
        if entry is None:
            entry = {"owner": upload_id, "refs": 1}
        else:
            entry = dict(entry, refs=int(entry["refs"]) + 1)
        self._content[key] = json.dumps(entry)
        self._claims[upload_id] = key
        self._cache[key] = entry
        return str(entry["owner"])


def register(app: faust.App, sender: Sender, settings: Settings) -> None:
    from streams.app import raw_topic

    def table(name: str) -> Any:
        return app.Table(
            name,
            default=None,
            key_type=str,
            value_type=str,
            partitions=settings.topic_partitions,
        )

    ledger = Ledger(
        table("dedupe-content"), table("dedupe-claims"), settings.dedupe_cache_size
    )

    async def _revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        ledger.forget_cache()

    app.on_partitions_revoked.connect(_revoked)  # type: ignore[arg-type]

    async def dedupe(stream: faust.StreamT) -> None:
        async for event in stream.events():
            # Tables are read and written here on the event loop (Faust
            # tables are not thread-safe); the step only applies the decision.
            owner = _claim(ledger, event)
            step = Step(
                agent="dedupe",
                input_schema="FileStage",
                handler=functools.partial(_apply, owner),
            )
            await process(step, event, sender, settings)

    app.agent(raw_topic(app, topics.TYPED), name="dedupe")(dedupe)


def _apply(
    owner: str | None, stage: dict[str, Any], headers: dict[str, str]
) -> list[Output]:
    record = decide(stage, owner)
    key = stage["upload_id"].encode()
    return [Output(topics.DEDUPLICATED, key, "FileStage", record)]


def _claim(ledger: Ledger, event: faust.EventT) -> str | None:
    """The owner of the event's content, claiming a reference to it."""
    try:
        stage = codec.decode("FileStage", event.value)
    except Exception:  # undecodable: process() dead-letters it
        return None
    # A mislabelled event is dead-lettered by process(); it must not claim
    # ownership of a tenant's content first.
    if not is_storable(stage) or not tenant_matches(
        headers_to_dict(event.headers), stage
    ):
        return None
    return ledger.claim(f"{stage['tenant']}:{stage['sha256']}", stage["upload_id"])
