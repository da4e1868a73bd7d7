"""Typecheck agent: what the bytes really are, against what the name claims.

libmagic reads the head of the content; the detected MIME type is compared
with the types the extension allows. Findings have stable codes:

- ``executable-content``: an executable (ELF, PE, Mach-O, script with a
  shebang) under a name that does not say so.
- ``type-mismatch``: the content is not a type the extension allows.

The output is keyed by tenant:sha256 so the dedupe agent's table lookups stay
on the partition that owns the digest.
"""

from __future__ import annotations

from typing import Any

import faust
import magic

from agents.deps import staged, store
from streams import topics
from streams.config import Settings
from streams.events import now_ms
from streams.logs import get_logger
from streams.pipeline import Output, Sender, Step, process

log = get_logger(__name__)

HEAD_BYTES = 64 * 1024

EXECUTABLE_TYPES = frozenset(
    {
        "application/x-dosexec",
        "application/x-executable",
        "application/x-pie-executable",
        "application/x-sharedlib",
        "application/x-mach-binary",
        "application/x-elf",
        "text/x-shellscript",
        "text/x-script.python",
        "text/x-perl",
    }
)
EXECUTABLE_EXTENSIONS = frozenset({"exe", "dll", "so", "bin", "sh", "py", "pl", "elf"})

TEXT_TYPES = ("text/plain", "text/csv", "application/csv")
# Extension -> MIME types its content may have. Unlisted extensions are not
# checked for mismatch; executables are always checked.
ALLOWED_TYPES: dict[str, tuple[str, ...]] = {
    "csv": TEXT_TYPES,
    "tsv": (*TEXT_TYPES, "text/tab-separated-values"),
    "txt": ("text/plain",),
    "json": ("application/json", "text/plain"),
    "jsonl": ("application/json", "application/x-ndjson", "text/plain"),
    "ndjson": ("application/json", "application/x-ndjson", "text/plain"),
    "parquet": (
        "application/vnd.apache.parquet",
        "application/x-parquet",
        "application/octet-stream",
    ),
    "pdf": ("application/pdf",),
    "png": ("image/png",),
    "jpg": ("image/jpeg",),
    "jpeg": ("image/jpeg",),
    "gif": ("image/gif",),
    "zip": ("application/zip",),
    "gz": ("application/gzip", "application/x-gzip"),
}


def extension(filename: str) -> str:
    _, dot, ext = filename.rpartition(".")
    return ext.lower() if dot else ""


def findings_for(filename: str, mime: str) -> list[str]:
    ext = extension(filename)
    findings = []
    if mime in EXECUTABLE_TYPES and ext not in EXECUTABLE_EXTENSIONS:
        findings.append("executable-content")
    allowed = ALLOWED_TYPES.get(ext)
    if allowed is not None and mime not in allowed:
        findings.append("type-mismatch")
    return findings


def handle(stage: dict[str, Any], headers: dict[str, str]) -> list[Output]:
    objects = store()
    if not staged(stage):
        return []

    head = objects.read_head(stage["staging_key"], HEAD_BYTES)
    mime = magic.from_buffer(head, mime=True) if head else "application/x-empty"
    findings = findings_for(stage["filename"], mime)
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
    from streams.app import raw_topic

    @app.agent(raw_topic(app, topics.SCANNED), name="typecheck")
    async def typecheck(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await process(STEP, event, sender, settings)
