"""tus concatenation: partial uploads joined into a final one by copying.

A partial upload's bytes go to the ``chunks.partial`` topic, which no agent
reads, so a part is never taken for a file of its own. Creating the final
upload copies each part's committed chunks, in order, into ``chunks`` under
the final upload's id with their offsets shifted: from there the final
upload is an ordinary upload to the agents, assembled, scanned, typed,
deduplicated and routed into the same tables.

The copy is found cheaply: a part's chunks all sit on the partition its id
hashes to, at or after ``replay_from`` (that partition's end when the part
was created), and a read_committed consumer sees exactly the committed ones,
in offset order, tiling the part. The copy commits batch by batch with the
final upload's offset, so a copy cut short (the gateway killed) resumes
where it stopped when the creation is retried with the same Idempotency-Key.

Limits: the final upload is created only from complete parts
(``concatenation-unfinished`` is not offered); the copy doubles the parts'
bytes in Kafka until the topics' retention drops them, and the creation
request answers once the copy is done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from ingest_gateway.append import advanced
from ingest_gateway.partitioner import partition_for
from ingest_gateway.session import Exclusive
from streams import codec
from streams.config import Settings
from streams.errors import KafkaUnavailable
from streams.events import new_id
from streams.logs import get_logger
from streams.topics import CHUNKS, PARTIAL_CHUNKS

log = get_logger(__name__)

STALL_S = 15.0


class PartialTopic:
    """Where partial uploads' chunks live, and a reader of them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic(PARTIAL_CHUNKS)
        self._partitions = 0
        self._probe = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"sluice-gateway-{settings.gateway_instance}-partials",
                "enable.auto.commit": False,
            }
        )

    def partitions(self) -> int:
        if not self._partitions:
            metadata = self._probe.list_topics(self.topic, timeout=10)
            topic = metadata.topics.get(self.topic)
            if topic is None or topic.error is not None:
                raise KafkaUnavailable(f"topic {self.topic} missing: run topics apply")
            self._partitions = len(topic.partitions)
        return self._partitions

    def start_of(self, upload_id: str) -> int:
        """The end of the partition a new partial upload will write to; blocks."""
        partition = partition_for(upload_id.encode(), self.partitions())
        try:
            _, high = self._probe.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=10, cached=False
            )
        except Exception as exc:
            raise KafkaUnavailable(f"cannot read watermarks: {exc}") from exc
        return int(high)

    def close(self) -> None:
        self._probe.close()

    def chunks_of(
        self, part: dict[str, Any], skip_below: int
    ) -> Iterator[dict[str, Any]]:
        """The committed chunks of a partial upload from skip_below; blocks."""
        partition = partition_for(part["upload_id"].encode(), self.partitions())
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "group.id": f"sluice-gateway-concat-{new_id()}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.max.bytes": 8 * 1024 * 1024,
                "max.partition.fetch.bytes": 2 * 1024 * 1024,
                "queued.max.messages.kbytes": 16 * 1024,
            }
        )
        try:
            start = part.get("replay_from") or 0
            consumer.assign([TopicPartition(self.topic, partition, start)])
            expected = skip_below
            progress_at = time.monotonic()
            while expected < part["length"]:
                message = consumer.poll(0.5)
                if message is None or message.error() is not None:
                    if time.monotonic() - progress_at > STALL_S:
                        raise KafkaUnavailable("partial upload's chunks not found")
                    continue
                if message.key() != part["upload_id"].encode():
                    continue
                chunk = codec.decode("Chunk", message.value() or b"")
                end = chunk["offset"] + chunk["length"]
                if end <= expected:
                    continue
                if chunk["offset"] != expected:
                    raise KafkaUnavailable("partial upload's chunks have a gap")
                expected = end
                progress_at = time.monotonic()
                yield chunk
        finally:
            consumer.close()


async def copy_parts(
    exclusive: Exclusive,
    parts: list[dict[str, Any]],
    partials: PartialTopic,
    settings: Settings,
) -> dict[str, Any]:
    """Copy the parts' bytes into the final upload, resuming at its offset."""
    topic = settings.topic(CHUNKS)
    batch_bytes = settings.gateway_batch_bytes
    base = 0
    for part in parts:
        final = exclusive.state
        if final["offset"] >= base + part["length"]:
            base += part["length"]
            continue
        skip_below = final["offset"] - base
        reader = partials.chunks_of(part, skip_below)
        batch: list[dict[str, Any]] = []
        size = 0
        while True:
            chunk = await asyncio.to_thread(next, reader, None)
            if chunk is not None:
                batch.append(_shifted(chunk, exclusive.state, base))
                size += chunk["length"]
            if batch and (chunk is None or size >= batch_bytes):
                await _commit(exclusive, batch, size, topic, settings)
                batch, size = [], 0
            if chunk is None:
                break
        base += part["length"]
    log.info("upload.concatenated", parts=len(parts), length=base)
    return exclusive.state


def _shifted(chunk: dict[str, Any], final: dict[str, Any], base: int) -> dict[str, Any]:
    offset = base + chunk["offset"]
    return dict(
        chunk,
        event_id=f"{final['upload_id']}:{offset}",
        upload_id=final["upload_id"],
        offset=offset,
        upload_length=final["length"],
        filename=final["filename"],
        metadata=final["metadata"],
    )


async def _commit(
    exclusive: Exclusive,
    batch: list[dict[str, Any]],
    size: int,
    topic: str,
    settings: Settings,
) -> None:
    state = exclusive.state
    new = advanced(state, state["offset"] + size, settings)
    await exclusive.commit(new, lambda: batch, topic)
