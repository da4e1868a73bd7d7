"""Upload state shared by every gateway instance through a compacted topic.

Each instance tails ``upload-state`` (read_committed) in a background thread
into an in-memory map. Before answering about an upload an instance calls
:meth:`UploadStates.sync_upload`, which waits until it has read everything
committed so far on that upload's partition, so a second or restarted
instance reports the same offset as the one that wrote it.

"Committed so far" needs care: a producer's commit returns once the
transaction coordinator has decided it, before the commit markers reach the
partition, and until they do read_committed readers (and the partition's
end as they are told it) stop short of it. So another instance that
answered a PATCH a millisecond ago may have written a state nobody can read
yet. Unless the caller has just fenced the upload's writer (which waits for
the upload's own transactions to finish), a sync first waits, briefly, to
read up to the partition's end *including* open transactions; a partition
held back longer than that (a transaction left open by a killed instance,
aborted when it times out) falls back to what is readable.

Limits: the map holds every upload still on the compacted topic (a few
hundred bytes each); an instance's start-up reads the whole topic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from ingest_gateway.partitioner import partition_for
from streams import codec
from streams.config import Settings
from streams.errors import DecodeError, KafkaUnavailable
from streams.logs import get_logger
from streams.topics import UPLOAD_STATE

log = get_logger(__name__)

# How long a sync waits for open transactions on a partition to finish
# (commit markers land within milliseconds; a dead writer's open
# transaction lasts until it times out, and is not worth waiting for).
SETTLE_S = 0.5

# Statuses in which an upload may still be written to.
UNFINISHED = frozenset({"CREATED", "RECEIVING"})


class UploadStates:
    """The latest UploadState of every upload, rebuilt from Kafka."""

    def __init__(self, settings: Settings) -> None:
        self._topic = settings.topic(UPLOAD_STATE)
        self._states: dict[str, dict[str, Any]] = {}
        self._positions: dict[int, int] = {}
        self._lock = threading.Condition()
        self._stop = threading.Event()
        # Told of every state read from Kafka, on the reading thread.
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"sluice-gateway-{settings.gateway_instance}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": False,
            }
        )
        # Watermark queries get clients of their own: on the polling
        # consumer they wait behind its fetches. A read_committed client is
        # told where readable records end, a read_uncommitted one where
        # written ones do (open transactions included).
        self._watermarks = self._ends_client(settings, "read_committed")
        self._written_ends = self._ends_client(settings, "read_uncommitted")
        self._thread = threading.Thread(
            target=self._run, name="upload-state", daemon=True
        )

    @staticmethod
    def _ends_client(settings: Settings, isolation: str) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"sluice-gateway-{settings.gateway_instance}-watermarks",
                "enable.auto.commit": False,
                "isolation.level": isolation,
            }
        )

    def start(self, timeout_s: float = 30.0) -> None:
        metadata = self._consumer.list_topics(self._topic, timeout=timeout_s)
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None:
            raise KafkaUnavailable(f"topic {self._topic} missing: run topics apply")
        self._partitions = sorted(topic.partitions)
        self._consumer.assign(
            [TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in self._partitions]
        )
        self._thread.start()
        self.sync(timeout_s)
        log.info("upload_state.loaded", uploads=len(self._states))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()
        self._watermarks.close()
        self._written_ends.close()

    def _run(self) -> None:
        # This thread alone calls the consumer: librdkafka serialises calls
        # on one handle, and a position() from another thread can starve
        # behind back-to-back polls.
        while not self._stop.is_set():
            # A short wait: transaction markers move positions without a
            # message, and sync() waits for the position, so look often
            # (position() is local to the client, not a broker call).
            for message in self._consumer.consume(500, 0.01):
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("upload_state.poll_error", error=str(error))
                    continue
                partition, offset = message.partition(), message.offset()
                if partition is not None and offset is not None:
                    self._apply(partition, offset, message.value())
            self._refresh_positions()

    def _apply(self, partition: int, offset: int, value: bytes | None) -> None:
        state = None
        with self._lock:
            self._positions[partition] = offset + 1
            if value is not None:
                try:
                    state = codec.decode("UploadState", value)
                except DecodeError as exc:
                    # Not written by a gateway: skip it rather than stop
                    # reading every upload's state behind it.
                    log.error(
                        "upload_state.undecodable",
                        partition=partition,
                        offset=offset,
                        error=str(exc),
                    )
                    self._lock.notify_all()
                    return
                current = self._states.get(state["upload_id"])
                # Offsets only move forward; a stale record never rolls one back.
                if current is None or state["updated_at"] >= current["updated_at"]:
                    self._states[state["upload_id"]] = state
            self._lock.notify_all()
        if state is not None:
            for listener in self.listeners:
                listener(state)

    def sync_upload(
        self, upload_id: str, timeout_s: float = 10.0, *, fenced: bool = False
    ) -> None:
        """Block until this upload's partition is read up to what is committed.

        fenced: the caller has just initialised the upload's writer, so none
        of the upload's transactions is still on its way (no settling).
        """
        partition = partition_for(upload_id.encode(), len(self._partitions))
        self.sync(
            timeout_s, partitions=[partition], settle_s=0.0 if fenced else SETTLE_S
        )

    def sync(
        self,
        timeout_s: float = 10.0,
        partitions: list[int] | None = None,
        *,
        settle_s: float = 0.0,
    ) -> None:
        """Block until every record committed before this call has been read.

        With settle_s, first wait up to that long for transactions open on
        these partitions to finish, so that one committed just before this
        call but whose markers are still on the way is read too.
        """
        chosen = partitions if partitions is not None else self._partitions
        if settle_s > 0:
            written = self._ends(self._written_ends, chosen, timeout_s)
            if self._wait_for(written, settle_s):
                return
            log.info("upload_state.unsettled", partitions=chosen, waited_s=settle_s)
        readable = self._ends(self._watermarks, chosen, timeout_s)
        if not self._wait_for(readable, timeout_s):
            raise KafkaUnavailable("upload state is lagging behind Kafka")

    def _ends(
        self, client: Consumer, partitions: list[int], timeout_s: float
    ) -> dict[int, int]:
        ends: dict[int, int] = {}
        for partition in partitions:
            tp = TopicPartition(self._topic, partition)
            try:
                _, high = client.get_watermark_offsets(
                    tp, timeout=timeout_s, cached=False
                )
            except Exception as exc:
                raise KafkaUnavailable(f"cannot read watermarks: {exc}") from exc
            ends[partition] = high
        return ends

    def _wait_for(self, targets: dict[int, int], timeout_s: float) -> bool:
        """Whether the reader reached targets within timeout_s."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            # Transaction markers occupy offsets too, so "caught up" means the
            # consumer's position reached the high watermark, not a record.
            while not self._caught_up(targets):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.05))
        return True

    def _caught_up(self, targets: dict[int, int]) -> bool:
        return all(self._positions.get(p, 0) >= high for p, high in targets.items())

    def _refresh_positions(self) -> None:
        try:
            positions = self._consumer.position(
                [TopicPartition(self._topic, p) for p in self._partitions]
            )
        except Exception:  # position is advisory; retry on the next wait
            return
        with self._lock:
            for tp in positions:
                if tp.offset >= 0:
                    self._positions[tp.partition] = max(
                        self._positions.get(tp.partition, 0), tp.offset
                    )
            self._lock.notify_all()

    def get(self, upload_id: str) -> dict[str, Any] | None:
        with self._lock:
            state = self._states.get(upload_id)
            return dict(state) if state is not None else None

    def put(self, state: dict[str, Any]) -> None:
        """Record a state this instance has just committed to Kafka."""
        with self._lock:
            current = self._states.get(state["upload_id"])
            if current is None or state["updated_at"] >= current["updated_at"]:
                self._states[state["upload_id"]] = dict(state)

    def snapshot(self) -> Iterator[dict[str, Any]]:
        """A copy of every state, for sweeps."""
        with self._lock:
            states = [dict(s) for s in self._states.values()]
        yield from states
