"""``sluice produce``: write a file's chunk events straight to Kafka.

For producer services inside the platform's network that would rather not
speak HTTP. The contract is docs/direct-producers.md; this is its reference
implementation. One file is one upload and one Kafka transaction holding:

- its chunks on ``chunks``, keyed by upload id (murmur2, as the gateway and
  Java clients partition), cut at multiples of ``SLUICE_CHUNK_BYTES``, each
  with its sha256, the last one reaching the declared length;
- its ``UploadState`` (status COMPLETE, source ``direct``) on
  ``upload-state``, so the gateway reports it and streams its progress.

Either all of it becomes visible to read_committed readers or none does, so
a producer that dies mid-file leaves nothing behind and can simply run
again. From there the file goes through the same agents into the same
tables as a tus upload.

Limits: one transaction per file, so a file must be written within the
transaction timeout (``TRANSACTION_TIMEOUT_MS``); the tenant is the
producer's word (Kafka ACLs, not tokens, guard this path).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException, Producer

from streams import codec
from streams.auth import check_tenant
from streams.config import Settings
from streams.errors import InvalidRequest, KafkaUnavailable
from streams.events import make_headers, new_id, now_ms
from streams.logs import get_logger
from streams.names import InvalidFilename, validate_filename
from streams.topics import CHUNKS, UPLOAD_STATE

log = get_logger(__name__)

TRANSACTION_TIMEOUT_MS = 300_000
# How long a record may wait for room in the producer's queue.
SEND_TIMEOUT_S = 60.0
# Chunk records a writer may have queued or in flight at once; see
# chunk_queue_kbytes.
QUEUED_CHUNKS = 4
# What a chunk record carries besides its data: ids, digest, headers, and
# metadata (Upload-Metadata is at most 8 KiB).
CHUNK_RECORD_OVERHEAD = 16 * 1024
# The largest record a writer sends (its message.max.bytes).
MAX_RECORD_BYTES = 1024 * 1024


def _producer(settings: Settings, upload_id: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "transactional.id": f"sluice-produce-{upload_id}",
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "queue.buffering.max.kbytes": chunk_queue_kbytes(settings.chunk_bytes),
            "message.max.bytes": MAX_RECORD_BYTES,
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
        }
    )


def chunks(
    path: Path, *, upload_id: str, tenant: str, filename: str, chunk_bytes: int
) -> Iterator[dict[str, Any]]:
    """The file's Chunk records, read a chunk at a time."""
    length = path.stat().st_size
    produced_at = now_ms()
    offset = 0
    with path.open("rb") as handle:
        while True:
            data = handle.read(chunk_bytes)
            if not data and offset:
                return
            yield {
                "event_id": f"{upload_id}:{offset}",
                "tenant": tenant,
                "upload_id": upload_id,
                "offset": offset,
                "length": len(data),
                "upload_length": length,
                "sha256": hashlib.sha256(data).hexdigest(),
                "data": data,
                "filename": filename,
                "metadata": {"filename": filename},
                "source": "direct",
                "produced_at": produced_at,
            }
            offset += len(data)
            if not data:
                return


def produce_file(
    path: Path,
    *,
    tenant: str,
    settings: Settings,
    owner: str = "direct",
    upload_id: str | None = None,
) -> dict[str, Any]:
    """Write one file as an upload, atomically; return its upload state."""
    tenant = check_tenant(tenant)
    try:
        filename = validate_filename(path.name)
    except InvalidFilename as exc:
        raise InvalidRequest(str(exc), reason=f"filename-{exc.reason}") from exc
    length = path.stat().st_size
    if length > settings.max_upload_bytes:
        raise InvalidRequest("file exceeds the size limit", reason="too-large")

    upload_id = upload_id or new_id()
    correlation_id = new_id()
    now = now_ms()
    state: dict[str, Any] = {
        "upload_id": upload_id,
        "tenant": tenant,
        "owner": owner,
        "status": "COMPLETE",
        "offset": length,
        "length": length,
        "filename": filename,
        "metadata": {"filename": filename},
        "correlation_id": correlation_id,
        "created_at": now,
        "updated_at": now,
        "source": "direct",
    }
    headers = make_headers(
        correlation_id=correlation_id, tenant=tenant, upload_id=upload_id
    )
    key = upload_id.encode()
    producer = _producer(settings, upload_id)
    try:
        producer.init_transactions(30)
        producer.begin_transaction()
        for chunk in chunks(
            path,
            upload_id=upload_id,
            tenant=tenant,
            filename=filename,
            chunk_bytes=settings.chunk_bytes,
        ):
            send_bounded(
                producer,
                settings.topic(CHUNKS),
                key,
                codec.encode("Chunk", chunk),
                headers,
                timeout_s=SEND_TIMEOUT_S,
            )
        send_bounded(
            producer,
            settings.topic(UPLOAD_STATE),
            key,
            codec.encode("UploadState", state),
            headers,
            timeout_s=SEND_TIMEOUT_S,
        )
        producer.commit_transaction(60)
    except (KafkaException, KafkaUnavailable) as exc:
        try:
            producer.abort_transaction(30)
        except KafkaException as abort_error:
            # The broker aborts it when transaction.timeout.ms runs out.
            log.warning("produce.abort_failed", error=str(abort_error))
        raise KafkaUnavailable(f"cannot produce {path.name}: {exc}") from exc
    return state


def chunk_queue_kbytes(chunk_bytes: int) -> int:
    """``queue.buffering.max.kbytes`` for a producer of chunk records.

    librdkafka keeps at most five produce requests in flight on a
    connection (the idempotent producer's window), and a chunk record of
    the default size fills a request on its own (``batch.size`` is about
    1 MB). Records queued beyond what the window can carry make its broker
    thread spin: it finds a full batch ready, cannot send it, and wakes
    again at once until a response frees a slot. With 32 uploads writing
    8 MiB transactions, that spin took five times the CPU of the writes
    themselves and starved Kafka on the same cores. Four chunk records
    (plus the state record, on a partition of its own) always fit;
    ``send_bounded`` waits for a delivery when the queue is full.

    Never less than the largest record: a concatenation copies its parts'
    records as they were written, possibly under a larger chunk size than
    this process's. Smaller records share requests, so a megabyte of them
    takes a request or two.
    """
    chunks = QUEUED_CHUNKS * (chunk_bytes + CHUNK_RECORD_OVERHEAD)
    return max(chunks, MAX_RECORD_BYTES) // 1024


def send_bounded(
    producer: Producer,
    topic: str,
    key: bytes,
    value: bytes,
    headers: list[tuple[str, str | bytes | None]],
    *,
    timeout_s: float,
) -> None:
    """Produce one record; when the local queue is full, wait for deliveries.

    Every transactional writer (the gateway's, ``sluice produce``) sends
    through this, so none grows its memory past librdkafka's bound. Raises
    KafkaUnavailable when no room came within timeout_s: with Kafka away,
    nothing is delivered until librdkafka gives the queued records up, and
    the writer's caller should hear it sooner.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            producer.produce(topic, value=value, key=key, headers=headers)
            producer.poll(0)
            return
        except BufferError:
            if time.monotonic() >= deadline:
                raise KafkaUnavailable(
                    f"no delivery to {topic} for {timeout_s:.0f} s"
                ) from None
            producer.poll(0.05)
