"""How every agent processes one event: decode, retry, send, or dead-letter.

An agent's work is a plain function ``(record, headers) -> [Output]`` run in
a worker thread (storage and clamd calls block). This module wraps it with
bounded retries for retriable errors, sends its outputs with the correlation
id carried forward, and turns any final failure into a dead letter so a
poison message never blocks its partition.

Every event names its tenant twice, in the ``tenant`` header and in the
record. Before any agent sees an event the two must agree; an event whose
header and record disagree (or lack a tenant) is dead-lettered as
``VALIDATION`` without being handled, so a mislabelled event can never move
bytes or rows from one tenant's space into another's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import faust
from prometheus_client import Counter, Histogram

from streams import codec, topics
from streams.config import Settings
from streams.errors import DecodeError, DependencyPaused, IntegrityError, SluiceError
from streams.events import CORRELATION_ID, TENANT, UPLOAD_ID, headers_to_dict, now_ms
from streams.lanes import lane_of
from streams.logs import bound, get_logger

log = get_logger(__name__)

SOURCE = "sluice-source"  # internal: topic|partition|offset of the input

EVENTS = Counter(
    "sluice_agent_events_total", "Events handled by agents", ["agent", "outcome"]
)
SECONDS = Histogram("sluice_agent_seconds", "Time to handle one event", ["agent"])


@dataclass(frozen=True)
class Output:
    """One record an agent wants sent, by topic short name and schema name."""

    topic: str
    key: bytes
    schema: str
    record: dict[str, Any]


Handler = Callable[[dict[str, Any], dict[str, str]], list[Output]]


@dataclass(frozen=True)
class Step:
    """An agent's identity, its input record type and its work."""

    agent: str
    input_schema: str
    handler: Handler


class Sender:
    """Resolves topic short names to Faust topics of one app."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        from streams.app import raw_topic

        self._topics = {spec.name: raw_topic(app, spec.name) for spec in topics.TOPICS}
        self._settings = settings

    async def send(
        self, topic: str, key: bytes, value: bytes, headers: Mapping[str, str]
    ) -> None:
        pending = await self._topics[topic].send(
            key=key,
            value=value,
            headers=[(k, v.encode()) for k, v in headers.items()],
        )
        # Wait for the broker's ack before the input event is acknowledged:
        # otherwise Faust may commit the input offset while this record still
        # sits in a buffer, and a crash then loses it.
        await pending


def register_laned(
    app: faust.App, step: Step, source: str, sender: Sender, settings: Settings
) -> None:
    """Run step as one agent per lane, on the lane topics of stage topic source."""
    from streams.app import raw_topic

    async def consume(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await process(step, event, sender, settings)

    for lane in topics.LANES:
        topic = raw_topic(app, topics.for_lane(source, lane))
        app.agent(topic, name=f"{step.agent}-{lane}")(consume)


async def process(
    step: Step,
    event: faust.EventT,
    sender: Sender,
    settings: Settings,
) -> str:
    """Handle one event to completion: outputs sent, or a dead letter sent."""
    headers = headers_to_dict(event.headers)
    message = event.message
    # Where the event sits in Kafka, for steps that must read around it;
    # never forwarded to outputs.
    headers[SOURCE] = f"{message.topic}|{message.partition}|{message.offset}"
    context = {
        "agent": step.agent,
        "correlation_id": headers.get(CORRELATION_ID, ""),
        "upload_id": headers.get(UPLOAD_ID, ""),
        "tenant": headers.get(TENANT, ""),
    }
    with bound(**context):
        started = time.monotonic()
        outcome, outputs, error, attempts = await _attempt(
            step, event.value, headers, settings
        )
        if outcome == "ok":
            for output in outputs:
                out_headers = dict(headers)
                out_headers.pop("replay-of", None)
                out_headers.pop(SOURCE, None)
                out_headers[TENANT] = output.record.get("tenant", context["tenant"])
                if "upload_id" in output.record:
                    out_headers[UPLOAD_ID] = output.record["upload_id"]
                topic = output.topic
                if topic in topics.LANED:
                    topic = topics.for_lane(topic, lane_of(output.record, settings))
                await sender.send(
                    topic,
                    output.key,
                    codec.encode(output.schema, output.record),
                    out_headers,
                )
        else:
            assert error is not None
            category = error.category if isinstance(error, SluiceError) else "INTERNAL"
            event_id = f"{message.topic}:{message.partition}:{message.offset}"
            headers.pop(SOURCE, None)
            letter: dict[str, Any] = {
                "event_id": event_id,
                "source_topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
                "key": event.key if isinstance(event.key, bytes) else None,
                "value": event.value if isinstance(event.value, bytes) else b"",
                "headers": headers,
                "category": category,
                "error": f"{type(error).__name__}: {error}"[:2000],
                "attempts": attempts,
                "agent": step.agent,
                "tenant": context["tenant"] or None,
                "upload_id": context["upload_id"] or None,
                "failed_at": now_ms(),
            }
            await sender.send(
                topics.DEAD_LETTER,
                event_id.encode(),
                codec.encode("DeadLetter", letter),
                headers,
            )
            log.error(
                "event.dead_lettered",
                category=category,
                attempts=attempts,
                error=letter["error"],
            )
            outcome = f"dead-letter-{category.lower()}"
        EVENTS.labels(step.agent, outcome).inc()
        SECONDS.labels(step.agent).observe(time.monotonic() - started)
        return outcome


def tenant_matches(headers: Mapping[str, str], record: Mapping[str, Any]) -> bool:
    """Whether an event's ``tenant`` header names its record's tenant."""
    tenant = record.get("tenant")
    return isinstance(tenant, str) and bool(tenant) and headers.get(TENANT) == tenant


def check_tenant(headers: Mapping[str, str], record: Mapping[str, Any]) -> None:
    """Raise IntegrityError (VALIDATION) unless header and record tenant agree."""
    if not tenant_matches(headers, record):
        raise IntegrityError("the tenant header does not match the record's tenant")


async def _attempt(
    step: Step,
    value: Any,
    headers: dict[str, str],
    settings: Settings,
) -> tuple[str, list[Output], BaseException | None, int]:
    try:
        if not isinstance(value, bytes):
            raise DecodeError("message value is not bytes")
        record = codec.decode(step.input_schema, value)
        check_tenant(headers, record)
    except (DecodeError, IntegrityError) as exc:
        return "dead-letter", [], exc, 1

    attempts = 0
    waited = 0.0
    while True:
        attempts += 1
        try:
            outputs = await asyncio.to_thread(step.handler, record, headers)
            return "ok", outputs, None, attempts
        except DependencyPaused as exc:
            # A breaker refused without trying: wait for its next trial and
            # do not count this as an attempt, up to a bound.
            attempts -= 1
            waited += exc.retry_after_s
            if waited > settings.retry_wait_max_s:
                return "dead-letter", [], exc, attempts
            await asyncio.sleep(exc.retry_after_s)
            continue
        except SluiceError as exc:
            if not exc.retriable or attempts >= settings.retry_attempts:
                return "dead-letter", [], exc, attempts
            error: BaseException = exc
        except Exception as exc:  # unknown faults: retried, then dead-lettered
            if attempts >= settings.retry_attempts:
                log.exception("event.internal_error")
                return "dead-letter", [], exc, attempts
            error = exc
        delay = settings.retry_backoff_s * 2 ** (attempts - 1)
        log.warning(
            "event.retrying",
            attempt=attempts,
            delay_s=delay,
            error=f"{type(error).__name__}: {error}",
        )
        await asyncio.sleep(delay)
