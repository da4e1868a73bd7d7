"""Audit events: who did what to what, and how it ended.

Authentication failures, permission denials and privileged actions (service
keys, dead-letter replays, quarantine actions, topic changes) become
``AuditEvent`` records (``schemas/avro/audit_event.avsc``) on the audit
topic, keyed by tenant; the warehouse loader lands them in
``sluice.audit_log``, where auditors read them.

Whose log an event lands in:

- a privileged action: the tenant whose data or keys it touched, so that
  tenant's auditors see it; :data:`~streams.auth.PLATFORM_TENANT` when it
  touched no one tenant (topics, tenantless dead letters);
- a permission denial: the caller's tenant;
- an authentication failure: the platform tenant, since an unverified
  token's tenant claim is the attacker's word and would let anyone write
  into a victim's log.

An event never holds a credential: no token, no API key, no secret. Actors
are the verified subject (``sub``, or ``service:<key id>``) or
``anonymous``.

Limits: :meth:`AuditLog.record` hands the event to the Kafka client and, when
asked to wait, waits a bounded time for the broker's acknowledgement; if
Kafka stays away longer the client keeps retrying in the background (up to
its ``message.timeout.ms``) and a final failure is logged and counted in
``sluice_audit_undelivered_total``, but the action it describes has already
happened.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import Counter

from streams import codec, topics
from streams.config import Settings
from streams.events import CORRELATION_ID, TENANT, new_id, now_ms
from streams.logs import get_logger

__all__ = [
    "ANONYMOUS",
    "DENIED",
    "FAILURE",
    "SUCCESS",
    "AuditLog",
    "audit_event",
    "correlation_id",
]

log = get_logger(__name__)

SUCCESS: Final = "success"
DENIED: Final = "denied"  # refused by access control
FAILURE: Final = "failure"  # allowed, but the action itself failed

ANONYMOUS: Final = "anonymous"

# Bounds what a caller can make us store per event.
MAX_DETAIL_CHARS: Final = 500
_CORRELATION_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")

EVENTS = Counter(
    "sluice_audit_events_total", "Audit events produced", ["action", "outcome"]
)
UNDELIVERED = Counter(
    "sluice_audit_undelivered_total", "Audit events Kafka did not acknowledge"
)


def correlation_id(value: str | None) -> str:
    """The caller's correlation id if it is a safe token, else a fresh one."""
    if value is not None and _CORRELATION_ID_RE.fullmatch(value):
        return value
    return new_id()


def audit_event(
    *,
    tenant: str,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    correlation_id: str,
    detail: Mapping[str, object] | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """An AuditEvent record; ``event_id`` defaults to a fresh id."""
    return {
        "event_id": event_id or new_id(),
        "occurred_at": now_ms(),
        "tenant": tenant,
        "actor": actor,
        "action": action,
        "target": target,
        "outcome": outcome,
        "correlation_id": correlation_id,
        "detail": {
            str(key): str(value)[:MAX_DETAIL_CHARS]
            for key, value in (detail or {}).items()
            if value is not None
        },
    }


class AuditLog:
    """Produces audit events to the audit topic, for one process."""

    def __init__(self, settings: Settings, producer: Producer | None = None) -> None:
        self._topic = settings.topic(topics.AUDIT)
        # Idempotent, so the client's own retries never duplicate an event.
        self._producer = producer or Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "queue.buffering.max.kbytes": 16 * 1024,
            }
        )

    def record(self, event: Mapping[str, Any], *, wait_s: float = 0) -> bool:
        """Produce one event; with ``wait_s``, wait that long for its ack.

        Returns whether the broker acknowledged it (always False without
        waiting). Blocks up to ``wait_s``: async callers use a thread.
        """
        delivered = threading.Event()

        def on_delivery(error: KafkaError | None, message: Message) -> None:
            if error is None:
                delivered.set()
                return
            UNDELIVERED.inc()
            log.error(
                "audit.undelivered",
                error=str(error),
                action=event["action"],
                tenant=event["tenant"],
                event_id=event["event_id"],
            )

        value = codec.encode("AuditEvent", dict(event))
        headers: list[tuple[str, str | bytes | None]] = [
            (TENANT, event["tenant"].encode()),
            (CORRELATION_ID, event["correlation_id"].encode()),
        ]
        try:
            self._produce(value, event["tenant"].encode(), headers, on_delivery)
        except BufferError:
            UNDELIVERED.inc()
            log.error("audit.queue_full", action=event["action"])
            return False
        EVENTS.labels(event["action"], event["outcome"]).inc()

        deadline = time.monotonic() + wait_s
        while wait_s > 0 and not delivered.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("audit.ack_late", action=event["action"], wait_s=wait_s)
                break
            self._producer.poll(min(remaining, 0.1))
        return delivered.is_set()

    def _produce(
        self,
        value: bytes,
        key: bytes,
        headers: list[tuple[str, str | bytes | None]],
        on_delivery: Any,
    ) -> None:
        try:
            self._producer.produce(
                self._topic,
                key=key,
                value=value,
                headers=headers,
                on_delivery=on_delivery,
            )
        except BufferError:
            # The local queue is full: serve delivery reports once, retry once.
            self._producer.poll(0.5)
            self._producer.produce(
                self._topic,
                key=key,
                value=value,
                headers=headers,
                on_delivery=on_delivery,
            )
        self._producer.poll(0)  # serve earlier events' delivery reports

    def close(self, timeout_s: float = 10) -> None:
        """Deliver what is queued, waiting at most ``timeout_s``."""
        left = self._producer.flush(timeout_s)
        if left:
            UNDELIVERED.inc(left)
            log.error("audit.undelivered_at_close", events=left)
