"""Moves Kafka topics into the warehouse: event tables and dataset tables.

Two loops, each with its own consumer group, so a large file never delays
the registry:

- :class:`RegistryLoader` (group ``sluice-warehouse``) reads results, stages,
  audit events and dead letters in batches of at most 1,000 messages or
  0.25 s, whichever comes first, and inserts them into their tables. A
  result is queryable well within 2 s of its event.
- :class:`DatasetLoader` (group ``sluice-warehouse-datasets``) reads results
  and loads each clean tabular file into its dataset table, one file at a
  time (``datasets``).

Both are read_committed consumers that commit only after their writes, so a
crash replays work instead of losing it, and every write is replay-safe: the
registry inserts only event identities its table does not hold yet (for
results, only a version newer than the newest held: a restated result lands,
a replayed old one does not), and a dataset load already recorded is
skipped. Replaying any topic from offset 0
therefore adds no rows. Retriable failures (warehouse or storage down) rewind
and retry the same messages; anything the warehouse refuses is dead-lettered
(category ``WAREHOUSE``) so the partition keeps flowing.
"""

from __future__ import annotations

import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client import Counter, Histogram

from streams import codec, topics
from streams.config import Settings
from streams.dlq import SUMMARY_FIELDS
from streams.errors import DataError, SluiceError
from streams.events import headers_to_dict, now_ms
from streams.logs import bound, get_logger
from streams.storage import ObjectStore
from streams.warehouse import datasets
from streams.warehouse.backend import Backend, quote
from streams.warehouse.schema import DATABASE

log = get_logger(__name__)

ROWS = Counter("sluice_warehouse_rows_total", "Rows written", ["table"])
SKIPPED = Counter(
    "sluice_warehouse_replayed_total", "Events already held (replays)", ["table"]
)
FAILURES = Counter("sluice_warehouse_failures_total", "Batches that failed", ["kind"])
LAG = Histogram(
    "sluice_warehouse_event_lag_seconds",
    "From an event's Kafka timestamp to its row being written",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)

REGISTRY_GROUP = "sluice-warehouse"
DATASET_GROUP = "sluice-warehouse-datasets"
BATCH_MESSAGES = 1000
BATCH_WAIT_S = 0.25
RETRY_PAUSE_S = 1.0

# Both lanes (interactive and bulk) of every stage topic.
STAGE_TOPICS = topics.stage_topics()


def _ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def result_row(r: dict[str, Any]) -> dict[str, Any]:
    """A FileResult as a file_results row."""
    row = {
        k: r[k]
        for k in (
            "tenant",
            "upload_id",
            "filename",
            "size",
            "sha256",
            "verdict",
            "reason",
            "signature",
            "engine",
            "detected_mime",
            "findings",
            "location",
            "duplicate_of",
            "dataset",
            "correlation_id",
        )
    }
    row["completed_at"] = _ts(r["completed_at"])
    return row


def stage_row(s: dict[str, Any]) -> dict[str, Any]:
    """A FileStage as a file_stages row."""
    scan = s.get("scan") or {}
    return {
        "tenant": s["tenant"],
        "upload_id": s["upload_id"],
        "stage": s["stage"],
        "filename": s["filename"],
        "size": s["size"],
        "sha256": s["sha256"],
        "scan_status": scan.get("status"),
        "signature": scan.get("signature"),
        "detected_mime": s["detected_mime"],
        "findings": s["findings"],
        "duplicate_of": s["duplicate_of"],
        "correlation_id": s["correlation_id"],
        "occurred_at": _ts(s["occurred_at"]),
    }


def audit_row(a: dict[str, Any]) -> dict[str, Any]:
    """An AuditEvent as an audit_log row."""
    return dict(a, occurred_at=_ts(a["occurred_at"]))


def dead_letter_row(d: dict[str, Any]) -> dict[str, Any]:
    """A DeadLetter as a dead_letters row (without the message bytes)."""
    row = {k: d[k] for k in SUMMARY_FIELDS}
    row["failed_at"] = _ts(d["failed_at"])
    return row


@dataclass(frozen=True)
class EventTable:
    """Where one record type lands, and the columns that identify an event."""

    schema: str
    table: str
    identity: tuple[str, ...]
    to_row: Callable[[dict[str, Any]], dict[str, Any]]
    # For events that can be restated (a result after a quarantine release):
    # the column that orders versions. Only an event newer than every held
    # version of its identity is written, so a replay never brings an old
    # version back, whether or not the engine has merged the versions yet.
    version: str | None = None


RESULTS = EventTable(
    "FileResult",
    "file_results",
    ("tenant", "upload_id"),
    result_row,
    version="completed_at",
)
STAGES = EventTable(
    "FileStage", "file_stages", ("tenant", "upload_id", "stage"), stage_row
)
AUDIT = EventTable("AuditEvent", "audit_log", ("tenant", "event_id"), audit_row)
DEAD_LETTERS = EventTable("DeadLetter", "dead_letters", ("event_id",), dead_letter_row)


def _key(table: EventTable, row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row[c]) for c in table.identity)


def absent(
    backend: Backend, table: EventTable, rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The rows the table must still get: identities it does not hold, once
    each, or (for versioned tables) versions newer than the newest it holds."""
    if not rows:
        return []
    keys = {_key(table, row) for row in rows}
    columns = ", ".join(table.identity)
    tuples = ", ".join("(" + ", ".join(quote(v) for v in key) + ")" for key in keys)
    left = f"({columns})" if len(table.identity) > 1 else columns
    newest = f", max({table.version}) AS newest" if table.version else ""
    held = {
        _key(table, r): str(r.get("newest", ""))
        for r in backend.query_json(
            f"SELECT {columns}{newest} FROM {DATABASE}.{table.table} "
            f"WHERE {left} IN ({tuples}) GROUP BY {columns}"
        )
    }

    chosen = []
    for row in rows:
        key = _key(table, row)
        if table.version is None:
            if key in held:
                continue
            held[key] = ""
        else:
            # Fixed-width timestamps: text order is time order.
            version = str(row[table.version])
            if key in held and version <= held[key]:
                continue
            held[key] = version
        chosen.append(row)
    if table.version is not None:
        # One version per identity and insert: rows of one block carry no
        # order FINAL could rely on, so only the newest goes in.
        newest_rows = {_key(table, row): row for row in chosen}
        chosen = list(newest_rows.values())
    return chosen


class _DeadLetters:
    """Produces the warehouse's own dead letters."""

    def __init__(self, settings: Settings, agent: str) -> None:
        self._settings = settings
        self._agent = agent
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "enable.idempotence": True,
                "acks": "all",
            }
        )

    def send(self, message: Message, error: SluiceError, suffix: str = "") -> None:
        headers = headers_to_dict(message.headers())  # type: ignore[arg-type]
        event_id = f"{message.topic()}:{message.partition()}:{message.offset()}{suffix}"
        letter: dict[str, Any] = {
            "event_id": event_id,
            "source_topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
            "key": message.key(),
            "value": message.value() or b"",
            "headers": headers,
            "category": error.category,
            "error": f"{type(error).__name__}: {error}"[:2000],
            "attempts": 1,
            "agent": self._agent,
            "tenant": headers.get("tenant"),
            "upload_id": headers.get("upload-id"),
            "failed_at": now_ms(),
        }
        self._producer.produce(
            self._settings.topic(topics.DEAD_LETTER),
            key=event_id.encode(),
            value=codec.encode("DeadLetter", letter),
            headers=list(headers.items()),
        )
        log.error("event.dead_lettered", category=error.category, error=letter["error"])

    def flush(self) -> None:
        self._producer.flush(10)


def _usable(message: Message) -> bool:
    error = message.error()
    if error is None:
        return True
    if error.code() != KafkaError._PARTITION_EOF:
        log.warning("warehouse.consume_error", error=str(error))
    return False


class _Loop(ABC):
    """A consumer thread: read, write, then commit; rewind on retriable errors."""

    group: str
    name: str

    def __init__(self, settings: Settings, backend: Backend, sources: list[str]):
        self._settings = settings
        self._backend = backend
        self._sources = sources
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        self._thread = threading.Thread(target=self._guard, name=self.name, daemon=True)
        self.last_write_at = 0.0

    def start(self) -> None:
        """Subscribe and start the loop's thread."""
        self._consumer.subscribe(self._sources)
        self._thread.start()

    def stop(self) -> None:
        """Finish the current batch, then close the consumer."""
        self._stop.set()
        self._thread.join(timeout=30)
        self._consumer.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _guard(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:
                # A bug must not end the loop silently: log, back off, go on
                # from the last committed offsets.
                FAILURES.labels("internal").inc()
                log.exception("warehouse.loop_failed", loop=self.name, error=str(exc))
                self._rewind_to_committed()
                time.sleep(RETRY_PAUSE_S)

    @abstractmethod
    def _step(self) -> None:
        """Read one batch, write it, commit its offsets."""

    def _rewind(self, batch: list[Message]) -> None:
        first: dict[tuple[str, int], int] = {}
        for m in batch:
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            if topic is None or partition is None or offset is None:
                continue
            key = (topic, partition)
            first[key] = min(first.get(key, offset), offset)
        for (topic, partition), offset in first.items():
            self._consumer.seek(TopicPartition(topic, partition, offset))

    def _rewind_to_committed(self) -> None:
        try:
            assigned = self._consumer.assignment()
            for tp in self._consumer.committed(assigned, timeout=10):
                if tp.offset >= 0:
                    self._consumer.seek(tp)
        except Exception as exc:  # the consumer itself is in trouble
            log.warning("warehouse.rewind_failed", loop=self.name, error=str(exc))


class RegistryLoader(_Loop):
    """Keeps the event tables (results, stages, audit, dead letters) current."""

    group = REGISTRY_GROUP
    name = "warehouse-registry"

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self._tables: dict[str, EventTable] = {
            settings.topic(topics.RESULTS): RESULTS,
            settings.topic(topics.AUDIT): AUDIT,
            settings.topic(topics.DEAD_LETTER): DEAD_LETTERS,
        }
        for name in STAGE_TOPICS:
            self._tables[settings.topic(name)] = STAGES
        self._dead_letters = _DeadLetters(settings, "warehouse")
        super().__init__(settings, backend, list(self._tables))

    def _step(self) -> None:
        messages = self._consumer.consume(
            num_messages=BATCH_MESSAGES, timeout=BATCH_WAIT_S
        )
        batch = [m for m in messages if _usable(m)]
        if not batch:
            return
        try:
            self.load(batch)
        except SluiceError as exc:
            if not exc.retriable:
                raise
            # Nothing committed: rewind and try the same batch again.
            FAILURES.labels("warehouse").inc()
            log.error("warehouse.batch_failed", error=str(exc), size=len(batch))
            self._rewind(batch)
            time.sleep(RETRY_PAUSE_S)
            return
        self._consumer.commit(asynchronous=False)
        self.last_write_at = time.time()

    def load(self, batch: list[Message]) -> None:
        """Write one batch of messages to their tables."""
        by_table: dict[str, list[tuple[Message, dict[str, Any]]]] = {}
        tables: dict[str, EventTable] = {}
        for message in batch:
            table = self._tables[message.topic() or ""]
            try:
                record = codec.decode(table.schema, message.value() or b"")
            except DataError as exc:
                # Agents dead-letter what they cannot read; a sink can only
                # report it. The offset still advances so the partition flows.
                FAILURES.labels("decode").inc()
                log.error(
                    "warehouse.undecodable",
                    topic=message.topic(),
                    offset=message.offset(),
                    error=str(exc),
                )
                continue
            tables[table.table] = table
            by_table.setdefault(table.table, []).append((message, table.to_row(record)))

        for name, pairs in by_table.items():
            self._write(tables[name], pairs)
        self._dead_letters.flush()

    def _write(
        self, table: EventTable, pairs: list[tuple[Message, dict[str, Any]]]
    ) -> None:
        rows = absent(self._backend, table, [row for _, row in pairs])
        SKIPPED.labels(table.table).inc(len(pairs) - len(rows))
        try:
            self._backend.insert_rows(f"{DATABASE}.{table.table}", rows)
        except DataError:
            # One bad row must not hold back the rest: retry one by one
            # and dead-letter only the rows the warehouse refuses.
            chosen = {id(row) for row in rows}
            for message, row in pairs:
                if id(row) not in chosen:
                    continue
                try:
                    self._backend.insert_rows(f"{DATABASE}.{table.table}", [row])
                except DataError as exc:
                    self._refused(message, exc)
        else:
            ROWS.labels(table.table).inc(len(rows))
        now = time.time()
        for message, _ in pairs:
            kind, ms = message.timestamp()
            if kind and ms > 0:
                LAG.observe(max(0.0, now - ms / 1000))

    def _refused(self, message: Message, error: DataError) -> None:
        if message.topic() == self._settings.topic(topics.DEAD_LETTER):
            # Dead-lettering a dead letter would loop; the log must do.
            log.error("warehouse.dead_letter_refused", error=str(error))
            return
        self._dead_letters.send(message, error)


class DatasetLoader(_Loop):
    """Loads clean tabular uploads named by results into their dataset tables."""

    group = DATASET_GROUP
    name = "warehouse-datasets"

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self._store = ObjectStore(settings.storage_root)
        self._dead_letters = _DeadLetters(settings, "warehouse-datasets")
        self._scratch = settings.home / "warehouse" / "scratch"
        super().__init__(settings, backend, [settings.topic(topics.RESULTS)])

    def _step(self) -> None:
        message = self._consumer.poll(BATCH_WAIT_S)
        if message is None or not _usable(message):
            return
        try:
            self.handle(message)
        except SluiceError as exc:
            if not exc.retriable:
                raise
            FAILURES.labels("dataset-retry").inc()
            log.error("dataset.retry", error=str(exc))
            self._rewind([message])
            time.sleep(RETRY_PAUSE_S)
            return
        self._consumer.commit(message=message, asynchronous=False)
        self.last_write_at = time.time()

    def handle(self, message: Message) -> None:
        """Load the dataset a result names, if any; dead-letter a refusal."""
        try:
            result = codec.decode("FileResult", message.value() or b"")
        except DataError:
            return  # the registry loop reports undecodable results
        if not result["dataset"] or result["verdict"] != "CLEAN":
            return
        with bound(
            upload_id=result["upload_id"],
            tenant=result["tenant"],
            correlation_id=result["correlation_id"],
        ):
            try:
                self.load(result)
            except FileNotFoundError:
                error = datasets.DatasetRejected("the stored file is gone")
                self._dead_letters.send(message, error, suffix="/dataset")
                self._dead_letters.flush()
            except SluiceError as exc:
                if exc.retriable:
                    raise
                FAILURES.labels("dataset").inc()
                log.error("dataset.rejected", error=str(exc))
                self._dead_letters.send(message, exc, suffix="/dataset")
                self._dead_letters.flush()

    def load(self, result: dict[str, Any]) -> None:
        """Load one result's file unless its load is already recorded."""
        tenant, dataset = result["tenant"], result["dataset"]
        if datasets.loaded(self._backend, tenant, dataset, result["upload_id"]):
            SKIPPED.labels("dataset").inc()
            log.info("dataset.already_loaded")
            return
        with self._local_copy(result) as path:
            record = datasets.load(
                self._backend,
                tenant=tenant,
                dataset=dataset,
                upload_id=result["upload_id"],
                filename=result["filename"],
                path=path,
            )
        ROWS.labels("dataset").inc(record["rows"])

    @contextmanager
    def _local_copy(self, result: dict[str, Any]) -> Iterator[Path]:
        """The file on local disk: itself, or a streamed temporary copy."""
        local = self._store.local_path(result["location"])
        if local is not None:
            yield Path(local)
            return
        self._scratch.mkdir(parents=True, exist_ok=True)
        suffix = "." + result["filename"].rpartition(".")[2]
        with tempfile.NamedTemporaryFile(dir=self._scratch, suffix=suffix) as tmp:
            for block in self._store.read_blocks(result["location"]):
                tmp.write(block)
            tmp.flush()
            yield Path(tmp.name)


class Loader:
    """Both loops of one warehouse process, started and stopped together."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.registry = RegistryLoader(settings, backend)
        self.datasets = DatasetLoader(settings, backend)

    def start(self) -> None:
        """Start both loops."""
        self.registry.start()
        self.datasets.start()

    def stop(self) -> None:
        """Stop both loops."""
        self.registry.stop()
        self.datasets.stop()

    @property
    def alive(self) -> bool:
        return self.registry.alive and self.datasets.alive
