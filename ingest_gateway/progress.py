"""Live progress: an upload's stage changes, to its owner, over SSE and WebSocket.

Each instance tails the stage topics (``files.assembled``, ``files.scanned``,
``files.typed``, ``files.deduplicated``, each in both lanes, and
``results``) in one thread, from
``SLUICE_GATEWAY_PROGRESS_LOOKBACK_S`` back, and keeps each recent upload's
stages in memory. ``received`` comes from ``upload-state`` when an upload
becomes complete. A subscriber first gets the stages so far, then each new
one as the thread reads it: the delay from the stage's record in Kafka to
the client is one fetch wait (``fetch.wait.max.ms``, 25 ms) plus delivery.
The stream ends after ``routed``, the stage that carries the verdict.

Every event is a JSON object: ``upload_id``, ``stage`` (received, assembled,
scanned, typed, deduplicated, routed), ``at`` (epoch ms the stage happened),
``kafka_ts`` (epoch ms of its Kafka record) and the stage's own fields.

Limits: stages older than the lookback, or beyond the most recent
``MAX_UPLOADS`` uploads, are not replayed to a new subscriber; the result
stays queryable with ``sluice status``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, TopicPartition
from starlette.responses import Response, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from ingest_gateway.state import UploadStates
from streams import codec, service_keys, topics
from streams.auth import AuthenticationError, Principal
from streams.config import Settings
from streams.errors import NotFound
from streams.events import new_id
from streams.logs import get_logger
from streams.permissions import Action, allows

log = get_logger(__name__)

MAX_UPLOADS = 50_000
HEARTBEAT_S = 15.0
TERMINAL = "routed"

# Each stage topic in both lanes (streams.topics.for_lane), then results.
STAGE_TOPICS = {
    topics.for_lane(name, lane): ("FileStage", stage)
    for name, stage in (
        (topics.ASSEMBLED, "assembled"),
        (topics.SCANNED, "scanned"),
        (topics.TYPED, "typed"),
        (topics.DEDUPLICATED, "deduplicated"),
    )
    for lane in topics.LANES
} | {topics.RESULTS: ("FileResult", "routed")}


def stage_event(stage: str, record: dict[str, Any], kafka_ts: int) -> dict[str, Any]:
    """What a subscriber is told about one stage record."""
    event: dict[str, Any] = {
        "upload_id": record["upload_id"],
        "stage": stage,
        "at": record.get("occurred_at") or record.get("completed_at") or kafka_ts,
        "kafka_ts": kafka_ts,
    }
    if stage == "assembled":
        event.update(size=record["size"], sha256=record["sha256"])
    elif stage == "scanned":
        scan = record.get("scan") or {}
        event.update(scan=scan.get("status"), signature=scan.get("signature"))
    elif stage == "typed":
        event.update(
            detected_mime=record.get("detected_mime"), findings=record["findings"]
        )
    elif stage == "deduplicated":
        event.update(duplicate_of=record.get("duplicate_of"))
    elif stage == "routed":
        event.update(
            verdict=record["verdict"],
            reason=record["reason"],
            location=record["location"],
            dataset=record.get("dataset"),
        )
    return event


class ProgressHub:
    """Recent stages per upload, and the subscribers waiting for more."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._history: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._tenants: dict[str, str] = {}
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"sluice-gateway-progress-{new_id()}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 25,
                "fetch.min.bytes": 1,
                "enable.partition.eof": False,
            }
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start tailing the stage topics; blocks until assigned."""
        self._loop = loop
        since = int((time.time() - self._settings.gateway_progress_lookback_s) * 1000)
        wanted = []
        for short in STAGE_TOPICS:
            name = self._settings.topic(short)
            metadata = self._consumer.list_topics(name, timeout=10)
            for partition in metadata.topics[name].partitions:
                wanted.append(TopicPartition(name, partition, since))
        starts = self._consumer.offsets_for_times(wanted, timeout=10)
        self._consumer.assign(
            [
                TopicPartition(tp.topic, tp.partition, tp.offset)
                if tp.offset >= 0
                else TopicPartition(tp.topic, tp.partition, OFFSET_END)
                for tp in starts
            ]
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._consumer.close()

    def _run(self) -> None:
        by_name = {self._settings.topic(k): v for k, v in STAGE_TOPICS.items()}
        while not self._stop.is_set():
            message = self._consumer.poll(0.1)
            if message is None or message.error() is not None:
                continue
            schema, stage = by_name[message.topic() or ""]
            try:
                record = codec.decode(schema, message.value() or b"")
            except Exception:  # a poison record is the agents' to dead-letter
                log.debug("progress.undecodable", topic=message.topic())
                continue
            _, kafka_ts = message.timestamp()
            # upload-state is read by another thread and may come second:
            # a file assembled was received, so say so first.
            received = {
                "upload_id": record["upload_id"],
                "stage": "received",
                "at": kafka_ts,
                "kafka_ts": kafka_ts,
                "size": record["size"],
            }
            self.publish(record["tenant"], received)
            self.publish(record["tenant"], stage_event(stage, record, kafka_ts))

    def received(self, state: dict[str, Any]) -> None:
        """Called for every upload-state record: complete means received."""
        if state["status"] == "COMPLETE" and state.get("concat") != "PARTIAL":
            event = {
                "upload_id": state["upload_id"],
                "stage": "received",
                "at": state["updated_at"],
                "kafka_ts": state["updated_at"],
                "size": state["length"],
            }
            self.publish(state["tenant"], event)

    def publish(self, tenant: str, event: dict[str, Any]) -> None:
        """Record an event and hand it to the upload's subscribers."""
        upload_id = event["upload_id"]
        with self._lock:
            history = self._history.setdefault(upload_id, [])
            if any(e["stage"] == event["stage"] for e in history):
                return  # a replayed stage restates, it does not repeat
            history.append(event)
            self._history.move_to_end(upload_id)
            self._tenants[upload_id] = tenant
            while len(self._history) > MAX_UPLOADS:
                old, _ = self._history.popitem(last=False)
                self._tenants.pop(old, None)
            queues = list(self._subscribers.get(upload_id, ()))
        loop = self._loop
        if loop is not None:
            for queue in queues:
                loop.call_soon_threadsafe(queue.put_nowait, event)

    def authorise(
        self, principal: Principal, upload_id: str, states: UploadStates
    ) -> str:
        """The upload id if the caller's tenant owns it; 404 otherwise."""
        state = states.get(upload_id)
        tenant = state["tenant"] if state is not None else None
        with self._lock:
            tenant = tenant or self._tenants.get(upload_id)
        if tenant != principal.tenant:
            raise NotFound("upload not found", reason="not-found")
        return upload_id

    async def follow(self, upload_id: str) -> AsyncIterator[dict[str, Any] | None]:
        """Past then live events of an upload; None now and then (heartbeat)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        with self._lock:
            self._subscribers.setdefault(upload_id, set()).add(queue)
            past = list(self._history.get(upload_id, ()))
        try:
            seen = set()
            for event in past:
                seen.add(event["stage"])
                yield event
                if event["stage"] == TERMINAL:
                    return
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    yield None
                    continue
                if event["stage"] in seen:
                    continue
                seen.add(event["stage"])
                yield event
                if event["stage"] == TERMINAL:
                    return
        finally:
            with self._lock:
                subscribers = self._subscribers.get(upload_id, set())
                subscribers.discard(queue)
                if not subscribers:
                    self._subscribers.pop(upload_id, None)


def sse_response(hub: ProgressHub, upload_id: str) -> Response:
    """An SSE stream of the upload's stages."""

    async def body() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        async for event in hub.follow(upload_id):
            if event is None:
                yield b": heartbeat\n\n"
                continue
            data = json.dumps(event, separators=(",", ":"))
            yield f"event: {event['stage']}\ndata: {data}\n\n".encode()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def websocket_endpoint(websocket: WebSocket) -> None:
    """The upload's stages as JSON text frames; the token as header or query."""
    gateway = websocket.app.state.gateway
    guard = gateway.guard
    header = websocket.headers.get("authorization")
    if header is None and "access_token" in websocket.query_params:
        header = f"Bearer {websocket.query_params['access_token']}"
    try:
        # The guard's own credential check (tokens and service keys) and
        # matrix, as for the SSE stream; a refusal closes with 1008.
        principal = await asyncio.to_thread(
            service_keys.authenticate, header, guard.verifier, guard.keys
        )
        if not allows(principal, Action.UPLOAD_READ):
            raise NotFound("not permitted", reason="forbidden")
        upload_id = gateway.progress.authorise(
            principal, websocket.path_params["upload_id"], gateway.states
        )
    except (AuthenticationError, NotFound):
        await websocket.close(code=1008)
        return

    await websocket.accept()
    try:
        async for event in gateway.progress.follow(upload_id):
            if event is None:
                await websocket.send_json({"stage": "heartbeat"})
                continue
            await websocket.send_json(event)
        await websocket.close(code=1000)
    except WebSocketDisconnect:
        return
