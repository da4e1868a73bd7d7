"""Scan agent: streams each assembled file through clamd, failing closed.

A file larger than clamd's StreamMaxLength cannot be scanned whole, so it is
held as suspicious without sending it; clamd's own limit alerts
(AlertExceedsMax, AlertEncrypted) also make a file suspicious. When clamd is
unreachable the step raises ScanUnavailable: retried with backoff, then
dead-lettered as SCAN_UNAVAILABLE, never passed on.
"""

from __future__ import annotations

from typing import Any

import faust

from agents.deps import clamd, staged, store
from streams import topics
from streams.config import Settings, get_settings
from streams.events import now_ms
from streams.logs import get_logger
from streams.pipeline import Output, Sender, Step, process

log = get_logger(__name__)

LIMIT_SIGNATURE = "Sluice.Limits.StreamMaxLength"


def handle(stage: dict[str, Any], headers: dict[str, str]) -> list[Output]:
    settings = get_settings()
    objects = store()
    if not staged(stage):
        return []

    scanner = clamd()
    engine = scanner.version()
    signature: str | None
    if stage["size"] > settings.clamd_stream_max_bytes:
        status, signature = "SUSPICIOUS", LIMIT_SIGNATURE
    else:
        reply = scanner.scan(objects.read_blocks(stage["staging_key"]))
        status, signature = reply.status, reply.signature
    log.info("file.scanned", status=status, signature=signature, engine=engine)

    record = dict(
        stage,
        event_id=f"{stage['upload_id']}:SCANNED",
        stage="SCANNED",
        scan={"status": status, "signature": signature, "engine": engine},
        occurred_at=now_ms(),
    )
    return [Output(topics.SCANNED, stage["upload_id"].encode(), "FileStage", record)]


STEP = Step(agent="scan", input_schema="FileStage", handler=handle)


def register(app: faust.App, sender: Sender, settings: Settings) -> None:
    from streams.app import raw_topic

    for lane in topics.LANES:
        source = raw_topic(app, topics.for_lane(topics.ASSEMBLED, lane))
        app.agent(source, name=f"scan-{lane}")(_consume(sender, settings))


def _consume(sender: Sender, settings: Settings) -> Any:
    async def scan(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await process(STEP, event, sender, settings)

    return scan
