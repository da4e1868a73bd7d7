"""The Faust application of the worker, and its topics.

Values travel as raw bytes and are decoded by the agents themselves
(``streams.pipeline``), so a message that is not valid Avro becomes a dead
letter instead of an exception inside Faust's consumer.

Faust runs with ``exactly_once``: an agent's sends and its input offsets
commit in one transaction. Faust's exactly-once mode has known bugs
(duplicates after a crash, fencing on rebalance), so every side effect the
agents perform is idempotent as well; see ``agents/``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import faust

from streams import topics
from streams.config import Settings, get_settings


def create_app(settings: Settings) -> faust.App:
    return faust.App(
        "sluice-worker",
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        processing_guarantee="exactly_once",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.replication_factor,
        # Downstream agents see a stage's output only once its transaction
        # commits, so the commit interval is the per-stage latency floor.
        broker_commit_interval=0.5,
        web_enabled=True,
        web_bind="127.0.0.1",
        web_port=settings.worker_web_port,
        web_transport="tcp://",
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
        producer_max_request_size=1_200_000,
        stream_wait_empty=False,
    )


@lru_cache(maxsize=1)
def get_app() -> faust.App:
    return create_app(get_settings())


def raw_topic(app: faust.App, short_name: str, **kwargs: Any) -> faust.TopicT:
    """A platform topic carrying framed Avro bytes, declared in streams.topics."""
    settings = get_settings()
    spec = next(t for t in topics.TOPICS if t.name == short_name)
    return app.topic(
        settings.topic(short_name),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=topics.partitions_of(spec, settings),
        **kwargs,
    )
