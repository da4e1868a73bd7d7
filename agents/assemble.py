"""Assemble agent: chunk events in, one staged file out.

Each chunk's bytes are checked against its sha256. On local storage they are
written in place into the upload's file as they arrive, and the file's
sha256 advances with them, so the final chunk finishes the file rather than
starting a copy of it. On object stores (no writes at an offset) each chunk
is stored as a part named by its offset; the final chunk checks the parts
for gaps and overlaps and streams them, in order, into the assembled object
while hashing it. Either way memory holds one chunk or block at a time
whatever the file size.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import faust

from agents.deps import already_routed, store
from streams import codec, storage, topics
from streams.config import Settings, get_settings
from streams.errors import DecodeError, IntegrityError
from streams.events import headers_to_dict, now_ms
from streams.logs import get_logger
from streams.pipeline import SOURCE, Output, Sender, Step, process, tenant_matches

log = get_logger(__name__)

SAFE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def check_chunk(chunk: dict[str, Any]) -> None:
    """What every chunk must satisfy before any of its bytes are stored."""
    # Ids become storage paths: refuse anything that could escape them.
    if not SAFE_ID.match(chunk["tenant"]) or not SAFE_ID.match(chunk["upload_id"]):
        raise IntegrityError("tenant or upload id is not a safe identifier")
    data: bytes = chunk["data"]
    if len(data) != chunk["length"]:
        raise IntegrityError("chunk length does not match its data")
    if hashlib.sha256(data).hexdigest() != chunk["sha256"]:
        raise IntegrityError("chunk checksum mismatch")
    if chunk["offset"] < 0 or chunk["offset"] + len(data) > chunk["upload_length"]:
        raise IntegrityError("chunk lies outside the declared upload length")


def handle(chunk: dict[str, Any], headers: dict[str, str]) -> list[Output]:
    check_chunk(chunk)
    tenant, upload_id = chunk["tenant"], chunk["upload_id"]
    data: bytes = chunk["data"]
    end = chunk["offset"] + chunk["length"]

    if already_routed(tenant, upload_id):
        return []  # a replay of a finished upload
    objects = store()
    assembled = storage.assembled_key(tenant, upload_id)
    if objects.exists(assembled):
        # A replay after assembly: restate the result, store nothing new.
        if objects.read_range(assembled, chunk["offset"], len(data)) != data:
            raise IntegrityError("chunk differs from the assembled file")
        if end != chunk["upload_length"]:
            return []
        digest = objects.digest(assembled)
        return [_assembled(chunk, headers, digest)]

    if objects.in_place:
        return _assemble_in_place(chunk, headers)

    _store_part(chunk)
    if end < chunk["upload_length"]:
        return []
    _refuse_if_conflicted(tenant, upload_id)

    parts = _contiguous_parts(tenant, upload_id, chunk["upload_length"])
    if parts is None and SOURCE in headers:
        # A chunk the stream processor never delivered: still in Kafka.
        repaired = repair_parts(chunk, headers[SOURCE])
        log.warning("file.parts_repaired", parts=repaired)
        parts = _contiguous_parts(tenant, upload_id, chunk["upload_length"])
    if parts is None:
        raise IntegrityError("upload has gaps or overlaps between its chunks")
    digest = objects.write_stream(assembled, _read_parts(tenant, upload_id, parts))
    objects.delete_prefix(storage.parts_prefix(tenant, upload_id))
    log.info("file.assembled", size=digest.size)
    return [_assembled(chunk, headers, digest)]


class RunningDigests:
    """The sha256 of each upload's file so far, advanced chunk by chunk.

    Held in memory only: after a restart, a rebalance, or for an upload
    whose chunks came out of order, there is none and the finished file is
    hashed once from disk instead. An entry is trusted only while the file
    is at least as long as what it hashed (the file only grows; shorter
    means it was removed and begun again). Bounded, so abandoned uploads
    cannot pile up.
    """

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._digests: OrderedDict[tuple[str, str], tuple[Any, int]] = OrderedDict()

    def advance(
        self, upload: tuple[str, str], offset: int, data: bytes, size_before: int
    ) -> None:
        """Note data written at offset into a file that held size_before bytes."""
        entry = self._digests.pop(upload, None)
        if entry is not None and size_before < entry[1]:
            entry = None  # not the file this digest was taken of
        if entry is None and offset == 0:
            entry = (hashlib.sha256(), 0)
        if entry is None:
            return
        digest, covered = entry
        if offset == covered:
            digest.update(data)
            covered += len(data)
        elif offset + len(data) > covered:
            return  # bytes past a gap: hash from disk at the end
        self._digests[upload] = (digest, covered)
        while len(self._digests) > self._limit:
            self._digests.popitem(last=False)

    def finish(self, upload: tuple[str, str], length: int) -> str | None:
        """The hex digest if it covers exactly [0, length), else None."""
        entry = self._digests.pop(upload, None)
        if entry is None or entry[1] != length:
            return None
        return str(entry[0].hexdigest())

    def forget(self, upload: tuple[str, str]) -> None:
        self._digests.pop(upload, None)

    def clear(self) -> None:
        self._digests.clear()


RUNNING = RunningDigests()


def _assemble_in_place(chunk: dict[str, Any], headers: dict[str, str]) -> list[Output]:
    tenant, upload_id = chunk["tenant"], chunk["upload_id"]
    length = chunk["upload_length"]
    objects = store()
    upload = (tenant, upload_id)
    assembling = storage.assembling_key(tenant, upload_id)
    try:
        size_before = objects.write_at(assembling, chunk["offset"], chunk["data"])
    except IntegrityError:
        _mark_conflicted(tenant, upload_id)
        raise
    if size_before is not None:
        RUNNING.advance(upload, chunk["offset"], chunk["data"], size_before)
    else:
        # Ahead of the bytes in place (an earlier chunk is not here yet):
        # kept as a part until the file reaches it.
        _store_part(chunk)
    if chunk["offset"] + chunk["length"] < length:
        return []

    try:
        _refuse_if_conflicted(tenant, upload_id)
        size = _merge_parts(tenant, upload_id)
        if size != length and SOURCE in headers:
            # A chunk the stream processor never delivered: still in Kafka.
            repaired = repair_parts(chunk, headers[SOURCE], covered=size)
            log.warning("file.parts_repaired", parts=repaired)
            size = _merge_parts(tenant, upload_id)
        if size != length:
            raise IntegrityError("upload has gaps or overlaps between its chunks")
    except IntegrityError:
        RUNNING.forget(upload)
        raise
    sha256 = RUNNING.finish(upload, length)
    digest = (
        storage.Digest(size=length, sha256=sha256)
        if sha256 is not None
        else objects.digest(assembling)
    )
    assembled = storage.assembled_key(tenant, upload_id)
    # On disk before the event says it exists: the chunks' offsets may be
    # committed once the event is acknowledged.
    objects.sync(assembling)
    objects.rename(assembling, assembled)
    objects.delete_prefix(storage.parts_prefix(tenant, upload_id))
    log.info("file.assembled", size=digest.size, hashed_in_stream=sha256 is not None)
    return [_assembled(chunk, headers, digest)]


def _store_part(chunk: dict[str, Any]) -> None:
    """Stage a chunk as a part; a part already there must hold the same bytes."""
    tenant, upload_id = chunk["tenant"], chunk["upload_id"]
    objects = store()
    key = storage.part_key(tenant, upload_id, chunk["offset"])
    if objects.exists(key):
        if objects.read_head(key, chunk["length"] + 1) != chunk["data"]:
            _mark_conflicted(tenant, upload_id)
            raise IntegrityError("chunk differs from the bytes stored there")
        return
    objects.put(key, chunk["data"])


def _mark_conflicted(tenant: str, upload_id: str) -> None:
    """Remember that two chunks of this upload disagreed: it never completes."""
    store().put(storage.conflict_key(tenant, upload_id), b"conflicting chunks\n")


def _refuse_if_conflicted(tenant: str, upload_id: str) -> None:
    if store().exists(storage.conflict_key(tenant, upload_id)):
        raise IntegrityError(
            "upload refused: two of its chunks carried different bytes for one range"
        )


def _merge_parts(tenant: str, upload_id: str) -> int:
    """Write parts that the in-place file has reached into it; its size after."""
    objects = store()
    assembling = storage.assembling_key(tenant, upload_id)
    sizes = objects.list_sizes(storage.parts_prefix(tenant, upload_id))
    for name in sorted(n for n in sizes if n.isdigit()):
        key = storage.part_key(tenant, upload_id, int(name))
        data = objects.read_head(key, sizes[name])
        try:
            if objects.write_at(assembling, int(name), data) is None:
                break
        except IntegrityError:
            _mark_conflicted(tenant, upload_id)
            raise
        objects.delete_prefix(key)
    return objects.size(assembling) if objects.exists(assembling) else 0


REPAIR_WINDOW = 2000
REPAIR_MAX_MESSAGES = 200_000


def repair_parts(final: dict[str, Any], source: str, covered: int = 0) -> int:
    """Store the upload's chunks found before the final one in its partition.

    Reads the chunks topic backwards from the final chunk, a window at a
    time, read_committed, and stages as a part every chunk of this upload
    that passes the agent's own checks and lies past ``covered`` (bytes
    already assembled in place). Returns how many parts it added.
    """
    from confluent_kafka import Consumer, TopicPartition

    settings = get_settings()
    topic, partition_text, offset_text = source.split("|")
    partition, final_offset = int(partition_text), int(offset_text)
    tenant, upload_id = final["tenant"], final["upload_id"]
    objects = store()
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"sluice-assemble-repair-{upload_id}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    stored, end = 0, final_offset
    try:
        low, _ = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=10
        )
        while end > low and final_offset - end < REPAIR_MAX_MESSAGES:
            start = max(low, end - REPAIR_WINDOW)
            consumer.assign([TopicPartition(topic, partition, start)])
            covered_first_chunk = False
            while True:
                message = consumer.poll(5.0)
                if message is None or message.error() is not None:
                    break
                position = message.offset() or 0
                if position >= end:
                    break
                if message.key() != upload_id.encode():
                    continue
                record = _repairable(message, final)
                if record is None:
                    continue
                covered_first_chunk = covered_first_chunk or record["offset"] == 0
                if record["offset"] + record["length"] <= covered:
                    continue
                key = storage.part_key(tenant, upload_id, record["offset"])
                if not objects.exists(key):
                    stored += 1
                _store_part(record)
            if covered_first_chunk:
                break
            end = start
    finally:
        consumer.close()
    return stored


def _repairable(message: Any, final: dict[str, Any]) -> dict[str, Any] | None:
    """A chunk read back from Kafka, if it passes what the agent would check.

    The same checks as a delivered chunk (tenant header and record agree,
    ids, length, checksum, bounds), and it must belong to the final chunk's
    upload: same tenant, same declared length. Anything else was, or would
    have been, dead-lettered; repair never brings it back.
    """
    try:
        record = codec.decode("Chunk", message.value() or b"")
    except DecodeError:
        return None
    headers = headers_to_dict(message.headers())
    if not tenant_matches(headers, record) or record["tenant"] != final["tenant"]:
        return None
    if record["upload_length"] != final["upload_length"]:
        return None
    try:
        check_chunk(record)
    except IntegrityError:
        return None
    return record


def _contiguous_parts(tenant: str, upload_id: str, length: int) -> list[int] | None:
    """Part offsets in order if they tile [0, length) exactly, else None."""
    sizes = store().list_sizes(storage.parts_prefix(tenant, upload_id))
    offsets = sorted(int(name) for name in sizes if name.isdigit())
    expected = 0
    for offset in offsets:
        if offset != expected:
            return None
        expected += sizes[f"{offset:020d}"]
    return offsets if expected == length else None


def _read_parts(tenant: str, upload_id: str, offsets: list[int]) -> Iterator[bytes]:
    objects = store()
    for offset in offsets:
        yield from objects.read_blocks(storage.part_key(tenant, upload_id, offset))


def _assembled(
    chunk: dict[str, Any], headers: dict[str, str], digest: storage.Digest
) -> Output:
    upload_id = chunk["upload_id"]
    if digest.size != chunk["upload_length"]:
        raise IntegrityError("assembled size differs from the declared length")
    record = {
        "event_id": f"{upload_id}:ASSEMBLED",
        "upload_id": upload_id,
        "tenant": chunk["tenant"],
        "stage": "ASSEMBLED",
        "filename": chunk["filename"],
        "metadata": chunk["metadata"],
        "size": digest.size,
        "sha256": digest.sha256,
        "staging_key": storage.assembled_key(chunk["tenant"], upload_id),
        "correlation_id": headers.get("correlation-id", ""),
        "scan": None,
        "detected_mime": None,
        "findings": [],
        "duplicate_of": None,
        "occurred_at": now_ms(),
    }
    return Output(topics.ASSEMBLED, upload_id.encode(), "FileStage", record)


STEP = Step(agent="assemble", input_schema="Chunk", handler=handle)


def register(app: faust.App, sender: Sender, settings: Settings) -> None:
    from streams.app import raw_topic

    async def _revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        # Another worker may write these uploads' files from now on.
        RUNNING.clear()

    app.on_partitions_revoked.connect(_revoked)  # type: ignore[arg-type]

    @app.agent(raw_topic(app, topics.CHUNKS), name="assemble")
    async def assemble(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await process(STEP, event, sender, settings)
