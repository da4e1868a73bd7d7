"""Moves results, stages, audit events and dead letters from Kafka into tables.

A plain read_committed consumer reads batches, inserts them, then commits its
offsets: a crash between insert and commit replays the batch, and the
ReplacingMergeTree tables (read with FINAL) absorb the replay. Clean tabular
files named by a result are loaded into their dataset table the same way:
the upload's old rows are deleted before its rows are inserted.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client import Counter

from streams import codec, topics
from streams.config import Settings
from streams.errors import DataError, SluiceError, WarehouseUnavailable
from streams.events import headers_to_dict, now_ms
from streams.logs import bound, get_logger
from streams.storage import ObjectStore
from streams.warehouse.backend import Backend, ident, quote
from streams.warehouse.schema import DATABASE, DATASETS

log = get_logger(__name__)

ROWS = Counter("sluice_warehouse_rows_total", "Rows written", ["table"])
FAILURES = Counter("sluice_warehouse_failures_total", "Batches that failed", ["kind"])

STAGE_TOPICS = tuple(
    topics.for_lane(name, lane) for name in topics.LANED for lane in topics.LANES
)
FORMATS = {
    "csv": "CSVWithNames",
    "tsv": "TSVWithNames",
    "jsonl": "JSONEachRow",
    "ndjson": "JSONEachRow",
    "parquet": "Parquet",
}


def _ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def result_row(r: dict[str, Any]) -> dict[str, Any]:
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
    return dict(a, occurred_at=_ts(a["occurred_at"]))


def dead_letter_row(d: dict[str, Any]) -> dict[str, Any]:
    row = {
        k: d[k]
        for k in (
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
        )
    }
    row["failed_at"] = _ts(d["failed_at"])
    return row


class Loader:
    """Background consumer that keeps the warehouse tables current."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self._settings = settings
        self._backend = backend
        self._store = ObjectStore(settings.storage_root)
        self._stop = threading.Event()
        self._routes: dict[str, tuple[str, str, Any]] = {
            settings.topic(topics.RESULTS): ("FileResult", "file_results", result_row),
            settings.topic(topics.AUDIT): ("AuditEvent", "audit_log", audit_row),
            settings.topic(topics.DEAD_LETTER): (
                "DeadLetter",
                "dead_letters",
                dead_letter_row,
            ),
        }
        for name in STAGE_TOPICS:
            self._routes[settings.topic(name)] = ("FileStage", "file_stages", stage_row)
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": "sluice-warehouse",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        self._dead_letters = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "enable.idempotence": True,
                "acks": "all",
            }
        )
        self._thread = threading.Thread(target=self._run, name="loader", daemon=True)
        self.last_batch_at = 0.0

    def start(self) -> None:
        self._consumer.subscribe(list(self._routes))
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = self._consumer.consume(num_messages=500, timeout=0.5)
            batch = [m for m in messages if self._usable(m)]
            if not batch:
                continue
            try:
                self.load(batch)
            except WarehouseUnavailable as exc:
                # Nothing committed: rewind and try the same batch again.
                FAILURES.labels("warehouse").inc()
                log.error("warehouse.batch_failed", error=str(exc), size=len(batch))
                self._rewind(batch)
                time.sleep(1.0)
                continue
            self._consumer.commit(asynchronous=False)
            self.last_batch_at = time.time()

    @staticmethod
    def _usable(message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("warehouse.consume_error", error=str(error))
        return False

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

    def load(self, batch: list[Message]) -> None:
        rows: dict[str, list[tuple[Message, dict[str, Any]]]] = defaultdict(list)
        datasets: list[tuple[Message, dict[str, Any]]] = []
        for message in batch:
            schema_name, table, to_row = self._routes[message.topic() or ""]
            try:
                record = codec.decode(schema_name, message.value() or b"")
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
            rows[table].append((message, to_row(record)))
            if schema_name == "FileResult" and record["dataset"]:
                datasets.append((message, record))

        for table, pairs in rows.items():
            try:
                self.insert(table, [row for _, row in pairs])
            except DataError:
                # One bad row must not hold back the rest: retry one by one
                # and dead-letter only the rows the warehouse refuses.
                for message, row in pairs:
                    try:
                        self.insert(table, [row])
                    except DataError as exc:
                        self._dead_letter(message, exc)
        for message, result in datasets:
            with bound(
                upload_id=result["upload_id"],
                tenant=result["tenant"],
                correlation_id=result["correlation_id"],
            ):
                try:
                    self.load_dataset(result)
                except SluiceError as exc:
                    if exc.retriable:
                        raise
                    FAILURES.labels("dataset").inc()
                    log.error("dataset.rejected", error=str(exc))
                    self._dead_letter(message, exc)
        self._dead_letters.flush(10)

    def _dead_letter(self, message: Message, error: SluiceError) -> None:
        headers = headers_to_dict(message.headers())  # type: ignore[arg-type]
        event_id = f"{message.topic()}:{message.partition()}:{message.offset()}"
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
            "agent": "warehouse",
            "tenant": headers.get("tenant"),
            "upload_id": headers.get("upload-id"),
            "failed_at": now_ms(),
        }
        self._dead_letters.produce(
            self._settings.topic(topics.DEAD_LETTER),
            key=event_id.encode(),
            value=codec.encode("DeadLetter", letter),
            headers=list(headers.items()),
        )
        log.error("event.dead_lettered", category=error.category, error=letter["error"])

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        body = "\n".join(json.dumps(row, separators=(",", ":")) for row in rows)
        self._backend.execute(
            f"INSERT INTO {DATABASE}.{table} FORMAT JSONEachRow\n{body}"
        )
        ROWS.labels(table).inc(len(rows))

    def load_dataset(self, result: dict[str, Any]) -> None:
        ext = result["filename"].rpartition(".")[2].lower()
        fmt = FORMATS.get(ext)
        if fmt is None:
            raise DataError(f"no loader for .{ext}")
        table = (
            f"{DATASETS}.{ident(dataset_table(result['tenant'], result['dataset']))}"
        )
        local = self._store.local_path(result["location"])
        if local is not None:
            self._load_file(table, Path(local), fmt, result["upload_id"])
            return
        with tempfile.NamedTemporaryFile(suffix=f".{ext}") as tmp:
            for block in self._store.read_blocks(result["location"]):
                tmp.write(block)
            tmp.flush()
            self._load_file(table, Path(tmp.name), fmt, result["upload_id"])

    def _load_file(self, table: str, path: Path, fmt: str, upload_id: str) -> None:
        source = f"file({quote(str(path))}, {quote(fmt)})"
        columns = [
            row["name"] for row in self._backend.query_json(f"DESCRIBE {source}")
        ]
        self._backend.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ENGINE = MergeTree "
            f"ORDER BY tuple() AS SELECT *, '' AS _upload_id FROM {source} LIMIT 0"
        )
        existing = {
            row["name"] for row in self._backend.query_json(f"DESCRIBE {table}")
        }
        for column in columns:
            if column not in existing:
                # New columns are added; rows loaded earlier read them as NULL.
                kind = self._column_type(source, column)
                self._backend.execute(
                    f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS "
                    f"{ident(column)} {kind}"
                )
        # Replay-safe: the upload's rows are replaced, never added twice.
        self._backend.execute(
            f"DELETE FROM {table} WHERE _upload_id = {quote(upload_id)}"
        )
        names = ", ".join(ident(c) for c in columns)
        self._backend.execute(
            f"INSERT INTO {table} ({names}, _upload_id) "
            f"SELECT {names}, {quote(upload_id)} FROM {source}"
        )
        count = self._backend.query_json(
            f"SELECT count() AS n FROM {table} WHERE _upload_id = {quote(upload_id)}"
        )[0]["n"]
        ROWS.labels("dataset").inc(int(count))
        log.info("dataset.loaded", table=table, rows=int(count))

    def _column_type(self, source: str, column: str) -> str:
        for row in self._backend.query_json(f"DESCRIBE {source}"):
            if row["name"] == column:
                kind = str(row["type"])
                return kind if kind.startswith("Nullable") else f"Nullable({kind})"
        return "Nullable(String)"


def dataset_table(tenant: str, dataset: str) -> str:
    return f"{tenant}__{dataset}"
