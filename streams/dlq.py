"""Dead-letter operations: list what agents gave up on, and replay it.

Replaying re-produces the original message (value, key, headers) to its
source topic with a ``replay-of`` header, records the replay on a compacted
topic so it is listed as replayed, and writes an audit event naming the
operator who asked, in the log of the letter's tenant. Agents are
idempotent, so replaying a message that already succeeded restates results.

A listing never carries a letter's key, value or headers, and showing one
letter decodes its message with every bytes field replaced by its length: a
chunk's value is file content, and operators never see file contents.
Callers reach these functions through the gateway's operator endpoints
(``ingest_gateway.control``), which check the permission matrix first.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streams import audit, codec, topics
from streams.auth import PLATFORM_TENANT
from streams.config import Settings
from streams.errors import DecodeError, KafkaUnavailable
from streams.events import CORRELATION_ID, REPLAY_OF, deterministic_id, new_id

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

# What a listing shows of a dead letter: where it came from and why it
# failed, never what it carried.
SUMMARY_FIELDS = (
    "event_id",
    "source_topic",
    "partition",
    "offset",
    "category",
    "error",
    "attempts",
    "agent",
    "tenant",
    "upload_id",
    "failed_at",
)


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
    """Every dead letter, once, without its payload; ``replayed`` marks replays."""
    return [
        {
            **{name: letter[name] for name in SUMMARY_FIELDS},
            "correlation_id": letter["headers"].get(CORRELATION_ID, ""),
            "replayed": letter["replayed"],
        }
        for letter in _dead_letters(settings)
    ]


def _dead_letters(settings: Settings) -> list[dict[str, Any]]:
    """Every dead letter, whole, once; ``replayed`` marks replays."""
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


def show_dead_letters(settings: Settings, ids: list[str]) -> list[dict[str, Any]]:
    """The dead letters named by ``ids``, each as :func:`describe` shows it."""
    wanted = set(ids)
    return [describe(d) for d in _dead_letters(settings) if d["event_id"] in wanted]


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
    actor: str,
    actor_tenant: str,
    ids: list[str] | None = None,
    category: str | None = None,
    request_correlation_id: str = "",
) -> list[str]:
    """Replay the chosen dead letters not replayed yet; return their ids."""
    chosen = [
        letter
        for letter in _dead_letters(settings)
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
        event = audit.audit_event(
            event_id=deterministic_id(letter["event_id"], "dlq.replayed"),
            tenant=letter["tenant"] or PLATFORM_TENANT,
            actor=actor,
            action="dlq.replayed",
            target=letter["upload_id"] or letter["event_id"],
            outcome=audit.SUCCESS,
            correlation_id=headers.get(CORRELATION_ID, ""),
            detail={
                "dead_letter": letter["event_id"],
                "category": letter["category"],
                "actor_tenant": actor_tenant,
                "request_correlation_id": request_correlation_id,
            },
        )
        producer.produce(
            settings.topic(topics.DLQ_REPLAYS),
            key=letter["event_id"].encode(),
            value=str(event["occurred_at"]).encode(),
        )
        producer.produce(
            settings.topic(topics.AUDIT),
            key=event["tenant"].encode(),
            value=codec.encode("AuditEvent", event),
            headers=[
                ("tenant", event["tenant"].encode()),
                (CORRELATION_ID, event["correlation_id"].encode()),
            ],
        )
    if producer.flush(30):
        raise KafkaUnavailable("replays were not all acknowledged by Kafka")
    return [letter["event_id"] for letter in chosen]
