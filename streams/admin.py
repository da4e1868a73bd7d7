"""Kafka administration: create the platform's topics from their declaration."""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streams.config import Settings
from streams.errors import KafkaUnavailable
from streams.topics import TOPICS, partitions_of


def _admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap})


def apply_topics(settings: Settings) -> list[tuple[str, str]]:
    """Create every declared topic that is missing; report what happened."""
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics(timeout=15).topics)
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot list topics: {exc}") from exc

    wanted = [
        NewTopic(
            settings.topic(spec.name),
            num_partitions=partitions_of(spec, settings),
            replication_factor=settings.replication_factor,
            config=spec.config,
        )
        for spec in TOPICS
        if settings.topic(spec.name) not in existing
    ]
    report = [
        (settings.topic(s.name), "exists")
        for s in TOPICS
        if settings.topic(s.name) in existing
    ]
    if wanted:
        for name, future in admin.create_topics(wanted, request_timeout=30).items():
            try:
                future.result()
                report.append((name, "created"))
            except KafkaException as exc:
                error = exc.args[0]
                if error.name() == "TOPIC_ALREADY_EXISTS":
                    report.append((name, "exists"))
                else:
                    raise KafkaUnavailable(f"cannot create {name}: {error}") from exc
    return sorted(report)


def describe_topics(settings: Settings) -> list[str]:
    metadata = _admin(settings).list_topics(timeout=15)
    rows = []
    for spec in TOPICS:
        name = settings.topic(spec.name)
        topic = metadata.topics.get(name)
        partitions = len(topic.partitions) if topic is not None else 0
        state = "present" if topic is not None else "missing"
        rows.append(f"{name}\t{state}\tpartitions={partitions}\t{spec.doc}")
    return rows
