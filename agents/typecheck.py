"""Typecheck agent: what the bytes really are, against what the name claims.

libmagic reads the head of the content, then the deep checks of
:mod:`streams.inspection` look inside: executables, Office macros, PDF
actions, active markup, archive bombs, escapes and encryption, polyglots,
and a type the extension does not allow. Each finding is a stable code
(``streams.inspection.Code``) carried in the stage's ``findings``; the route
agent turns them into a verdict with the tenant's policy
(``streams.policy``).

The output is keyed by tenant:sha256 so the dedupe agent's table lookups stay
on the partition that owns the digest.
"""

from __future__ import annotations

import tempfile
from typing import Any

import faust
import magic

from agents.deps import staged, store
from streams import topics
from streams.config import Settings
from streams.events import now_ms
from streams.inspection import inspect_file
from streams.logs import get_logger
from streams.pipeline import Output, Sender, Step, register_laned

log = get_logger(__name__)

HEAD_BYTES = 64 * 1024


def extension(filename: str) -> str:
    _, dot, ext = filename.rpartition(".")
    return ext.lower() if dot else ""


def findings_of(local_path: str, filename: str, mime: str) -> list[str]:
    """Finding codes of a local file, each at most once, in finding order."""
    findings = inspect_file(local_path, filename, mime)
    for finding in findings:
        log.info("file.finding", code=finding.code.value, detail=finding.detail)
    return [finding.code.value for finding in findings]


def handle(stage: dict[str, Any], headers: dict[str, str]) -> list[Output]:
    objects = store()
    if not staged(stage):
        return []

    head = objects.read_head(stage["staging_key"], HEAD_BYTES)
    mime = magic.from_buffer(head, mime=True) if head else "application/x-empty"
    local = objects.local_path(stage["staging_key"])
    if local is not None:
        findings = findings_of(local, stage["filename"], mime)
    else:
        # Remote storage: the checks need random access, so copy it first.
        with tempfile.NamedTemporaryFile(prefix="sluice-inspect-") as copy:
            for block in objects.read_blocks(stage["staging_key"]):
                copy.write(block)
            copy.flush()
            findings = findings_of(copy.name, stage["filename"], mime)
    log.info("file.typed", mime=mime, findings=findings)

    record = dict(
        stage,
        event_id=f"{stage['upload_id']}:TYPED",
        stage="TYPED",
        detected_mime=mime,
        findings=findings,
        occurred_at=now_ms(),
    )
    key = f"{stage['tenant']}:{stage['sha256']}".encode()
    return [Output(topics.TYPED, key, "FileStage", record)]


STEP = Step(agent="typecheck", input_schema="FileStage", handler=handle)


def register(app: faust.App, sender: Sender, settings: Settings) -> None:
    register_laned(app, STEP, topics.SCANNED, sender, settings)
