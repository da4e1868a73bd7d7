"""Scan agent: streams each assembled file through clamd, failing closed.

A file larger than clamd's StreamMaxLength cannot be scanned whole, so it is
held as suspicious without sending it; clamd's own limit alerts
(AlertExceedsMax, AlertEncrypted) also make a file suspicious. When clamd is
unreachable the step raises ScanUnavailable: retried with backoff, then
dead-lettered as SCAN_UNAVAILABLE, never passed on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import faust

from agents.deps import clamd, staged, store
from streams import topics
from streams.config import Settings, get_settings
from streams.errors import IntegrityError
from streams.events import now_ms
from streams.logs import get_logger
from streams.pipeline import Output, Sender, Step, register_laned

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
        digest = hashlib.sha256()

        def blocks() -> Iterator[bytes]:
            for block in objects.read_blocks(stage["staging_key"]):
                digest.update(block)
                yield block

        reply = scanner.scan(blocks())
        # The bytes clamd judged must be the bytes assembly hashed: the
        # digest names the content from here on (dedupe, final place).
        if digest.hexdigest() != stage["sha256"]:
            raise IntegrityError("staged file differs from its recorded sha256")
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
    register_laned(app, STEP, topics.ASSEMBLED, sender, settings)
