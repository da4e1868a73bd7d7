"""Events that operator commands write to Kafka (audit, restated results).

Agents send through Faust; commands run outside the worker and use this
small idempotent producer instead. Every record is Avro through
:mod:`streams.codec`, keyed as its topic declares.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaException, Producer

from streams import codec, topics
from streams.config import Settings
from streams.errors import KafkaUnavailable
from streams.events import deterministic_id, make_headers, now_ms


class Publisher:
    """An idempotent producer for a command's handful of events."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "partitioner": "murmur2_random",
            }
        )

    def send(
        self,
        topic: str,
        key: str,
        schema: str,
        record: dict[str, Any],
        *,
        correlation_id: str = "",
    ) -> None:
        headers = make_headers(
            correlation_id=correlation_id,
            tenant=str(record.get("tenant", "")),
            upload_id=record.get("upload_id"),
        )
        try:
            self._producer.produce(
                self._settings.topic(topic),
                key=key.encode(),
                value=codec.encode(schema, record),
                headers=headers,
            )
        except KafkaException as exc:
            raise KafkaUnavailable(f"cannot send to {topic}: {exc}") from exc

    def audit(
        self,
        *,
        tenant: str,
        actor: str,
        action: str,
        target: str,
        outcome: str,
        correlation_id: str = "",
        detail: dict[str, str] | None = None,
    ) -> None:
        occurred_at = now_ms()
        event = {
            "event_id": deterministic_id(action, target, actor, str(occurred_at)),
            "occurred_at": occurred_at,
            "tenant": tenant,
            "actor": actor,
            "action": action,
            "target": target,
            "outcome": outcome,
            "correlation_id": correlation_id,
            "detail": detail or {},
        }
        self.send(topics.AUDIT, tenant, "AuditEvent", event)

    def flush(self, timeout_s: float = 30) -> None:
        """Wait until every event is acknowledged; KafkaUnavailable if not."""
        if self._producer.flush(timeout_s) > 0:
            raise KafkaUnavailable("events not acknowledged by Kafka in time")
