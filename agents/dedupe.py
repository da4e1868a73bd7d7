"""Dedupe agent: the first upload of each (tenant, sha256) owns the bytes.

A Faust table, changelogged in the same transaction as the agent's output,
maps tenant:sha256 to the first clean upload with that content. Later uploads
of the same bytes are marked ``duplicate_of`` it; since clean content is
stored under a content-addressed key, the bytes exist once per tenant.
Replaying the first upload finds itself in the table and stays the owner.
"""

from __future__ import annotations

import functools
from typing import Any

import faust

from streams import codec, topics
from streams.config import Settings
from streams.events import now_ms
from streams.logs import get_logger
from streams.pipeline import Output, Sender, Step, process

log = get_logger(__name__)


def is_storable(stage: dict[str, Any]) -> bool:
    scan = stage.get("scan") or {}
    return scan.get("status") == "CLEAN" and not stage["findings"]


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


def register(app: faust.App, sender: Sender, settings: Settings) -> None:
    from streams.app import raw_topic

    owners = app.Table(
        "dedupe-owners",
        default=None,
        key_type=str,
        value_type=str,
        partitions=settings.topic_partitions,
    )

    @app.agent(raw_topic(app, topics.TYPED), name="dedupe")
    async def dedupe(stream: faust.StreamT) -> None:
        async for event in stream.events():
            # The table is read and written here on the event loop (Faust
            # tables are not thread-safe); the step only applies the decision.
            owner = _claim(owners, event)
            step = Step(
                agent="dedupe",
                input_schema="FileStage",
                handler=functools.partial(_apply, owner),
            )
            await process(step, event, sender, settings)


def _apply(
    owner: str | None, stage: dict[str, Any], headers: dict[str, str]
) -> list[Output]:
    record = decide(stage, owner)
    key = stage["upload_id"].encode()
    return [Output(topics.DEDUPLICATED, key, "FileStage", record)]


def _claim(owners: Any, event: faust.EventT) -> str | None:
    """The owner of the event's content, claiming it when it has none yet."""
    try:
        stage = codec.decode("FileStage", event.value)
    except Exception:  # undecodable: process() dead-letters it
        return None
    if not is_storable(stage):
        return None
    table_key = f"{stage['tenant']}:{stage['sha256']}"
    owner: str | None = owners.get(table_key)
    if owner is None:
        owners[table_key] = stage["upload_id"]
        owner = stage["upload_id"]
    return owner
