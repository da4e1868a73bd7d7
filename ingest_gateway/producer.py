"""Transactional writes of chunk events and upload state.

Every write about an upload (its creation, each batch of a PATCH body, a
lease, termination, expiry) is one Kafka transaction holding the chunks, if
any, and the upload's new state: either both become visible to
read_committed readers or neither does. That is what makes HEAD's
Upload-Offset the truth even when the gateway is killed between writing to
Kafka and answering the client.

Each upload is written through a producer whose ``transactional.id`` names
the upload (:class:`UploadWriters`). Initialising that id fences every
earlier producer of it, on any instance, and aborts its open transaction, so
after :meth:`UploadWriters.get` returns a fresh writer, no other writer can
commit for the upload until someone initialises the id again. The lease in
``upload_state`` (see ``ingest_gateway.session``) decides who may try.

confluent-kafka calls block, so each transaction runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from ingest_gateway.errors import Fenced
from streams import codec
from streams.codec import Buffers
from streams.config import Settings
from streams.errors import KafkaUnavailable
from streams.events import make_headers, now_ms
from streams.logs import get_logger
from streams.produce import MAX_RECORD_BYTES, chunk_queue_kbytes, send_bounded
from streams.topics import UPLOAD_STATE

log = get_logger(__name__)

TRANSACTION_TIMEOUT_S = 15.0
# After a failed write the client is waiting for its 503. A transaction the
# abort cannot reach ends by itself (TRANSACTION_TIMEOUT_MS), or when the
# upload's next writer fences it.
ABORT_TIMEOUT_S = 5.0
INIT_TIMEOUT_S = 10.0
# librdkafka aborts a transaction the broker has not seen committed in time;
# short, so a killed gateway's open transaction holds readers back briefly.
TRANSACTION_TIMEOUT_MS = 20000
WARM_UP_S = 0.01
IDLE_WRITER_S = 60.0
MAX_IDLE_WRITERS = 64

_FENCING_CODES = frozenset(
    {
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    }
)


def producer_config(settings: Settings, transactional_id: str) -> dict[str, Any]:
    """Configuration of every transactional producer the gateway creates."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "transactional.id": transactional_id,
        "enable.idempotence": True,
        "acks": "all",
        # The Java client's key hashing, as Faust and Kafka's own tools use:
        # one upload id maps to one partition for every client.
        "partitioner": "murmur2_random",
        "linger.ms": 2,
        # Only what can be in flight, so librdkafka never spins on the rest.
        "queue.buffering.max.kbytes": chunk_queue_kbytes(settings.chunk_bytes),
        "message.max.bytes": MAX_RECORD_BYTES,
        "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
        "socket.connection.setup.timeout.ms": 5000,
        # librdkafka's default backoffs make init_transactions take ~500 ms
        # on a new connection; an upload's first request waits for it.
        "retry.backoff.ms": 5,
        "retry.backoff.max.ms": 200,
        "reconnect.backoff.ms": 5,
        "reconnect.backoff.max.ms": 1000,
        "message.timeout.ms": TRANSACTION_TIMEOUT_MS - 1000,
    }


class UploadWriter:
    """The transactional producer of one upload."""

    def __init__(self, settings: Settings, upload_id: str) -> None:
        self.upload_id = upload_id
        self.used_at = time.monotonic()
        self._state_topic = settings.topic(UPLOAD_STATE)
        self._producer = Producer(
            producer_config(settings, f"sluice-upload-{upload_id}")
        )

    def init(self) -> None:
        """Fence every earlier writer of this upload; blocks."""
        try:
            # librdkafka asks for a producer id on a 500 ms timer when the
            # coordinator's connection is not up yet; letting the metadata
            # request open it first makes this ~30 ms instead.
            self._producer.list_topics(self._state_topic, timeout=INIT_TIMEOUT_S)
            time.sleep(WARM_UP_S)
            self._producer.init_transactions(INIT_TIMEOUT_S)
        except KafkaException as exc:
            raise KafkaUnavailable(f"cannot initialise writer: {exc}") from exc

    def transaction(
        self,
        state: dict[str, Any],
        chunks: Iterable[dict[str, Any]] = (),
        chunks_topic: str | None = None,
    ) -> None:
        """Write chunks (if any) then the new state, atomically; blocks."""
        headers = make_headers(
            correlation_id=state["correlation_id"],
            tenant=state["tenant"],
            upload_id=state["upload_id"],
        )
        key = state["upload_id"].encode()
        producer = self._producer
        try:
            producer.begin_transaction()
            for chunk in chunks:
                assert chunks_topic is not None
                value = codec.encode_spliced("Chunk", chunk, "data")
                send_bounded(
                    producer,
                    chunks_topic,
                    key,
                    value,
                    headers,
                    timeout_s=TRANSACTION_TIMEOUT_S,
                )
            send_bounded(
                producer,
                self._state_topic,
                key,
                codec.encode("UploadState", state),
                headers,
                timeout_s=TRANSACTION_TIMEOUT_S,
            )
            producer.commit_transaction(TRANSACTION_TIMEOUT_S)
        except KafkaException as exc:
            if _fenced(exc):
                raise Fenced(str(exc.args[0])) from exc
            aborted = _abort(producer)
            if aborted is not None and _fenced(aborted):
                # A commit that failed without saying why (EndTxn "unknown
                # broker error" while another writer fences this one): the
                # session reads where the upload really is and decides.
                raise Fenced(str(aborted.args[0])) from exc
            raise KafkaUnavailable(f"transaction failed: {exc}") from exc
        except BaseException:
            _abort(producer)
            raise
        self.used_at = time.monotonic()

    def close(self) -> None:
        """Let go of the producer; never raises.

        Outside a transaction a healthy writer has nothing queued, and a
        fenced one (which flush reports as a fatal error) never will.
        """
        try:
            self._producer.flush(1)
        except KafkaException as exc:
            log.info("producer.close_failed", error=str(exc))


def _fenced(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and (
        error.code() in _FENCING_CODES or error.fatal()
    )


def _abort(producer: Producer) -> KafkaException | None:
    """Abort the open transaction; what prevented it, if anything."""
    try:
        producer.abort_transaction(ABORT_TIMEOUT_S)
    except KafkaException as exc:
        log.warning("producer.abort_failed", error=str(exc))
        return exc
    return None


class UploadWriters:
    """Writers of the uploads this instance is serving, kept while in use."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._idle: OrderedDict[str, UploadWriter] = OrderedDict()
        self._lock = asyncio.Lock()
        # Evicted writers close in the background: a request putting its
        # writer back must not wait (holding its upload) on other uploads'.
        self._closing: set[asyncio.Task[None]] = set()

    async def get(self, upload_id: str) -> tuple[UploadWriter, bool]:
        """This upload's writer and whether it was just initialised (fencing)."""
        async with self._lock:
            writer = self._idle.pop(upload_id, None)
        if writer is not None:
            return writer, False
        writer = await asyncio.to_thread(UploadWriter, self._settings, upload_id)
        try:
            await asyncio.to_thread(writer.init)
        except BaseException:
            await asyncio.to_thread(writer.close)
            raise
        return writer, True

    async def put_back(self, writer: UploadWriter) -> None:
        """Keep a healthy writer for the upload's next request."""
        async with self._lock:
            self._idle[writer.upload_id] = writer
            self._idle.move_to_end(writer.upload_id)
            stale = self._evictable()
        for old in stale:
            task = asyncio.create_task(asyncio.to_thread(old.close))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _evictable(self) -> list[UploadWriter]:
        now = time.monotonic()
        stale = []
        while self._idle and (
            len(self._idle) > MAX_IDLE_WRITERS
            or now - next(iter(self._idle.values())).used_at > IDLE_WRITER_S
        ):
            stale.append(self._idle.popitem(last=False)[1])
        return stale

    async def discard(self, writer: UploadWriter) -> None:
        """Drop a fenced or failed writer; the next get initialises anew."""
        await asyncio.to_thread(writer.close)

    async def close(self) -> None:
        async with self._lock:
            writers = list(self._idle.values())
            self._idle.clear()
        if self._closing:
            await asyncio.wait(list(self._closing))
        for writer in writers:
            await asyncio.to_thread(writer.close)


def cut_chunks(
    pieces: Buffers,
    *,
    state: dict[str, Any],
    start_offset: int,
    chunk_bytes: int,
    upload_length: int,
) -> Iterator[dict[str, Any]]:
    """Chunk records of pieces (a body's buffers, in order) written at start_offset.

    Boundaries fall on multiples of chunk_bytes of the upload's own offsets,
    whatever the PATCH sizes, so a retried write names the same chunks. A
    chunk's data is the list of views of the pieces it spans: nothing is
    copied until the record is encoded. The pieces are only read: a
    transaction fenced on its first attempt is retried with the same chunks
    (``ingest_gateway.session``), so they live until it commits.
    """
    offset = start_offset
    produced_at = now_ms()
    boundary = (offset // chunk_bytes + 1) * chunk_bytes
    segments: list[memoryview] = []
    for piece in pieces:
        view = memoryview(piece)
        while view.nbytes:
            take = min(boundary - offset, view.nbytes)
            segments.append(view[:take])
            view = view[take:]
            offset += take
            if offset == boundary:
                start = offset - _size(segments)
                yield chunk_record(state, start, segments, upload_length, produced_at)
                segments = []
                boundary += chunk_bytes
    if segments:
        start = offset - _size(segments)
        yield chunk_record(state, start, segments, upload_length, produced_at)


def _size(buffers: Buffers) -> int:
    return sum(memoryview(b).nbytes for b in buffers)


def chunk_record(
    state: dict[str, Any],
    offset: int,
    data: bytes | Buffers,
    upload_length: int,
    produced_at: int | None = None,
) -> dict[str, Any]:
    """One Chunk event of an upload; data as bytes or as a list of buffers."""
    buffers: Buffers = [data] if isinstance(data, bytes) else data
    digest = hashlib.sha256()
    for buffer in buffers:
        digest.update(buffer)
    return {
        "event_id": f"{state['upload_id']}:{offset}",
        "tenant": state["tenant"],
        "upload_id": state["upload_id"],
        "offset": offset,
        "length": _size(buffers),
        "upload_length": upload_length,
        "sha256": digest.hexdigest(),
        "data": buffers,
        "filename": state["filename"],
        "metadata": state["metadata"],
        "source": state.get("source") or "tus",
        "produced_at": produced_at or now_ms(),
    }


def final_marker(state: dict[str, Any], length: int) -> dict[str, Any]:
    """The empty chunk that completes an upload whose last bytes came earlier.

    Used for zero-length uploads and for a deferred length declared once
    every byte is in: the assemble agent completes a file on the chunk that
    reaches its declared length.
    """
    return chunk_record(state, length, b"", length)
