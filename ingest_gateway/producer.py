"""Transactional writes of chunk events and upload state.

A PATCH's chunks and the upload's new offset are written in one Kafka
transaction: either both become visible to read_committed readers or neither
does. That is what makes HEAD's Upload-Offset the truth even when the gateway
is killed between writing to Kafka and answering the client.

confluent-kafka calls block, so each transaction runs in a worker thread, on
a producer taken from a small pool (one transaction per producer at a time).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from typing import IO, Any

from confluent_kafka import KafkaError, KafkaException, Producer

from streams import codec
from streams.config import Settings
from streams.errors import KafkaUnavailable
from streams.events import make_headers, now_ms
from streams.logs import get_logger
from streams.topics import CHUNKS, UPLOAD_STATE

log = get_logger(__name__)

TRANSACTION_TIMEOUT_S = 30.0


class ProducerPool:
    """A fixed set of transactional producers, each with its own id."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._chunks_topic = settings.topic(CHUNKS)
        self._state_topic = settings.topic(UPLOAD_STATE)
        self._idle: asyncio.Queue[Producer] = asyncio.Queue()
        self._all: list[Producer] = []

    def _make(self, index: int) -> Producer:
        settings = self._settings
        return Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "transactional.id": (
                    f"sluice-gateway-{settings.gateway_instance}-{index}"
                ),
                "enable.idempotence": True,
                "acks": "all",
                # The Java client's key hashing, as Faust and Kafka's own tools
                # use: one upload id maps to one partition for every client.
                "partitioner": "murmur2_random",
                "linger.ms": 5,
                # Bound what one producer may hold in memory while Kafka is slow.
                "queue.buffering.max.kbytes": 32 * 1024,
                "message.max.bytes": 1048576,
                "transaction.timeout.ms": 60000,
            }
        )

    async def start(self) -> None:
        for index in range(self._settings.gateway_producers):
            producer = self._make(index)
            try:
                # Fences any zombie holding this transactional id (a previous,
                # killed run of this instance) and aborts its open transaction.
                await asyncio.to_thread(producer.init_transactions, 30)
            except KafkaException as exc:
                raise KafkaUnavailable(f"cannot initialise producer: {exc}") from exc
            self._all.append(producer)
            self._idle.put_nowait(producer)

    async def close(self) -> None:
        for producer in self._all:
            await asyncio.to_thread(producer.flush, 10)

    async def commit(
        self,
        state: dict[str, Any],
        chunks: Iterator[dict[str, Any]] | None = None,
    ) -> None:
        """Write chunks (if any) then the new state, atomically."""
        producer = await self._idle.get()
        try:
            await asyncio.to_thread(self._transaction, producer, state, chunks)
        finally:
            self._idle.put_nowait(producer)

    def _transaction(
        self,
        producer: Producer,
        state: dict[str, Any],
        chunks: Iterator[dict[str, Any]] | None,
    ) -> None:
        headers = make_headers(
            correlation_id=state["correlation_id"],
            tenant=state["tenant"],
            upload_id=state["upload_id"],
        )
        key = state["upload_id"].encode()
        try:
            producer.begin_transaction()
            for chunk in chunks or ():
                self._produce(
                    producer,
                    self._chunks_topic,
                    key,
                    codec.encode("Chunk", chunk),
                    headers,
                )
            self._produce(
                producer,
                self._state_topic,
                key,
                codec.encode("UploadState", state),
                headers,
            )
            producer.commit_transaction(TRANSACTION_TIMEOUT_S)
        except KafkaException as exc:
            self._abort(producer, exc)
            raise KafkaUnavailable(f"transaction failed: {exc}") from exc
        except BaseException:
            self._abort(producer, None)
            raise

    @staticmethod
    def _produce(
        producer: Producer,
        topic: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, str | bytes | None]],
    ) -> None:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers)
                producer.poll(0)
                return
            except BufferError:
                # Local queue full: wait for deliveries instead of growing memory.
                producer.poll(0.1)

    @staticmethod
    def _abort(producer: Producer, cause: KafkaException | None) -> None:
        error = cause.args[0] if cause is not None and cause.args else None
        if isinstance(error, KafkaError) and error.fatal():
            log.error("producer.fatal", error=str(error))
        try:
            producer.abort_transaction(TRANSACTION_TIMEOUT_S)
        except KafkaException as exc:
            log.warning("producer.abort_failed", error=str(exc))


def chunk_records(
    spool: IO[bytes],
    *,
    state: dict[str, Any],
    start_offset: int,
    chunk_bytes: int,
) -> Iterator[dict[str, Any]]:
    """Cut a spooled PATCH body into Chunk records starting at start_offset."""
    spool.seek(0)
    offset = start_offset
    produced_at = now_ms()
    while data := spool.read(chunk_bytes):
        yield {
            "event_id": f"{state['upload_id']}:{offset}",
            "tenant": state["tenant"],
            "upload_id": state["upload_id"],
            "offset": offset,
            "length": len(data),
            "upload_length": state["length"],
            "sha256": hashlib.sha256(data).hexdigest(),
            "data": data,
            "filename": state["filename"],
            "metadata": state["metadata"],
            "source": "tus",
            "produced_at": produced_at,
        }
        offset += len(data)


def empty_final_chunk(state: dict[str, Any]) -> dict[str, Any]:
    """The single chunk that completes a zero-length upload."""
    return {
        "event_id": f"{state['upload_id']}:0",
        "tenant": state["tenant"],
        "upload_id": state["upload_id"],
        "offset": 0,
        "length": 0,
        "upload_length": 0,
        "sha256": hashlib.sha256(b"").hexdigest(),
        "data": b"",
        "filename": state["filename"],
        "metadata": state["metadata"],
        "source": "tus",
        "produced_at": now_ms(),
    }
