"""Dead-letter operations: list what agents gave up on, and replay it.

Replaying re-produces the original message (value, key, headers) to its
source topic with a ``replay-of`` header, records the replay on a compacted
topic so it is listed as replayed, and writes an audit event. Agents are
idempotent, so replaying a message that already succeeded restates results.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streams import codec, topics
from streams.config import Settings
from streams.errors import DecodeError
from streams.events import REPLAY_OF, deterministic_id, new_id, now_ms

# The record each topic's messages hold, by the topic's last name segment.
SCHEMA_OF_TOPIC = {
    "chunks": "Chunk",
    "assembled": "FileStage",
    "scanned": "FileStage",
    "typed": "FileStage",
    "deduplicated": "FileStage",
    "results": "FileResult",
    "audit": "AuditEvent",
}


def _read_all(settings: Settings, topic: str) -> list[Any]:
    """Every committed message of a topic, from the beginning to its end now."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"sluice-dlq-reader-{new_id()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=15).topics[topic]
        ends: dict[int, int] = {}
        assignment = []
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=15
            )
            if high > low:
                ends[partition] = high
                assignment.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
        consumer.assign(assignment)
        messages = []
        positions = {p: -1 for p in ends}
        while any(positions[p] < ends[p] - 1 for p in ends):
            message = consumer.poll(1.0)
            if message is None:
                # Transaction markers hold the last offsets: check positions.
                for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                    positions[tp.partition] = max(
                        positions[tp.partition], tp.offset - 1
                    )
                continue
            if message.error() is not None:
                continue
            partition, offset = message.partition(), message.offset()
            if partition is not None and offset is not None:
                positions[partition] = offset
                messages.append(message)
        return messages
    finally:
        consumer.close()


def list_dead_letters(settings: Settings) -> list[dict[str, Any]]:
    replayed = {
        m.key().decode()
        for m in _read_all(settings, settings.topic(topics.DLQ_REPLAYS))
        if m.key() is not None and m.value() is not None
    }
    letters = []
    for message in _read_all(settings, settings.topic(topics.DEAD_LETTER)):
        letter = codec.decode("DeadLetter", message.value())
        letter["replayed"] = letter["event_id"] in replayed
        letters.append(letter)
    # The same failure restated after a crash shares its event id: keep one.
    unique = {letter["event_id"]: letter for letter in letters}
    return list(unique.values())


def describe(letter: dict[str, Any]) -> dict[str, Any]:
    """A dead letter for people: its message decoded where possible, no bytes."""
    shown = {k: v for k, v in letter.items() if k not in ("key", "value")}
    shown["key"] = letter["key"].decode("utf-8", "replace") if letter["key"] else None
    shown["value_bytes"] = len(letter["value"])
    schema = SCHEMA_OF_TOPIC.get(letter["source_topic"].rpartition(".")[2])
    try:
        if schema is None:
            raise DecodeError("no schema for this topic")
        record = codec.decode(schema, letter["value"])
    except DecodeError as exc:
        shown["message"] = f"undecodable: {exc}"
    else:
        shown["message"] = {
            k: (f"<{len(v)} bytes>" if isinstance(v, bytes) else v)
            for k, v in record.items()
        }
    return shown


def replay_dead_letters(
    settings: Settings,
    *,
    ids: list[str] | None = None,
    category: str | None = None,
    actor: str = "operator",
) -> list[str]:
    """Replay the chosen dead letters not replayed yet; return their ids."""
    chosen = [
        letter
        for letter in list_dead_letters(settings)
        if not letter["replayed"]
        and (not ids or letter["event_id"] in ids)
        and (category is None or letter["category"] == category.upper())
    ]
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    for letter in chosen:
        headers = dict(letter["headers"])
        headers[REPLAY_OF] = letter["event_id"]
        producer.produce(
            letter["source_topic"],
            key=letter["key"],
            value=letter["value"],
            headers=[(k, v.encode()) for k, v in headers.items()],
        )
        producer.produce(
            settings.topic(topics.DLQ_REPLAYS),
            key=letter["event_id"].encode(),
            value=str(now_ms()).encode(),
        )
        audit = {
            "event_id": deterministic_id(letter["event_id"], "dlq.replayed"),
            "occurred_at": now_ms(),
            "tenant": letter["tenant"] or "_platform",
            "actor": actor,
            "action": "dlq.replayed",
            "target": letter["upload_id"] or letter["event_id"],
            "outcome": "success",
            "correlation_id": headers.get("correlation-id", ""),
            "detail": {
                "dead_letter": letter["event_id"],
                "category": letter["category"],
            },
        }
        producer.produce(
            settings.topic(topics.AUDIT),
            key=audit["tenant"].encode(),
            value=codec.encode("AuditEvent", audit),
        )
    producer.flush(30)
    return [letter["event_id"] for letter in chosen]
