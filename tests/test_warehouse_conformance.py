"""One suite for every warehouse backend: embedded chdb always, a ClickHouse
server whenever CLICKHOUSE_URL names one (skipped, with the reason, if not).

No ClickHouse server can run on the development and CI machines (no Docker;
Debian's clickhouse-server is 18.16, too old for DateTime64 and Map; no PyPI
package ships a server binary), so the server run happens where one is
reachable, e.g. ``CLICKHOUSE_URL=http://default:@127.0.0.1:8123`` against
the compose file's ClickHouse.

Between the two, the ``clickhouse-connect`` run drives the server backend's
own code (clickhouse-connect's client API: commands, raw queries, raw
inserts, error translation) over clickhouse-connect's chdb transport, so it
runs everywhere. Streamed dataset loads need the HTTP server's ``input()``
and skip there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ops.demo.corpus import build_corpus
from streams.auth import Principal
from streams.errors import WarehouseRejected
from streams.warehouse import datasets
from streams.warehouse.backend import Backend, ChdbBackend, Column, ServerBackend
from streams.warehouse.schema import LATEST, migrate
from streams.warehouse.scope import grants_for, scoped_query

SERVER_URL = os.environ.get("CLICKHOUSE_URL", "")


@pytest.fixture(scope="module", params=["chdb", "clickhouse-connect", "server"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    engine: Backend
    if request.param == "chdb":
        engine = ChdbBackend(tmp_path_factory.mktemp("chdb"))
    elif request.param == "clickhouse-connect":
        engine = ServerBackend(f"chdb://{tmp_path_factory.mktemp('cc')}")
    elif not SERVER_URL:
        pytest.skip("waits for a ClickHouse server: set CLICKHOUSE_URL to run it")
    else:
        engine = ServerBackend(SERVER_URL)
    migrate(engine)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out)
    return out


def _streams(backend: Backend) -> None:
    if isinstance(backend, ServerBackend) and backend.transport == "chdb":
        # The same loads run on the chdb backend; this transport waits for
        # a server (CLICKHOUSE_URL), whose input() it streams through.
        pytest.skip("waits for a ClickHouse server: chdb:// transport has no input()")


def _tenant() -> str:
    return f"c{uuid.uuid4().hex[:10]}"


def test_migrate_reports_the_latest_version(backend: Backend) -> None:
    assert migrate(backend) == LATEST


def test_rows_round_trip_through_json(backend: Backend) -> None:
    tenant = _tenant()
    backend.insert_rows(
        "sluice.audit_log",
        [
            {
                "event_id": "e1",
                "occurred_at": "2026-01-02 03:04:05.678",
                "tenant": tenant,
                "actor": "alice",
                "action": "file.routed",
                "target": "u1",
                "outcome": "clean",
                "correlation_id": "c1",
                "detail": {"k": "v"},
            }
        ],
    )
    rows = backend.query_json(
        f"SELECT actor, detail, occurred_at FROM sluice.audit_log "
        f"WHERE tenant = '{tenant}'"
    )
    assert rows == [
        {
            "actor": "alice",
            "detail": {"k": "v"},
            "occurred_at": "2026-01-02 03:04:05.678",
        }
    ]
    text = backend.query_text(
        f"SELECT actor FROM sluice.audit_log WHERE tenant = '{tenant}'", "CSV"
    )
    assert text == '"alice"\n'


def test_a_refused_statement_is_a_rejection(backend: Backend) -> None:
    with pytest.raises(WarehouseRejected):
        backend.execute("SELECT * FROM sluice.no_such_table")


def test_scoped_queries_run(backend: Backend) -> None:
    nobody = Principal("user-nobody", "nobody", frozenset({"reader"}))
    sql = scoped_query(
        "SELECT count() AS n FROM sluice.uploads", grants_for(nobody), backend
    )
    assert backend.query_json(sql) == [{"n": 0}]


def test_file_is_streamed_with_constants(backend: Backend, tmp_path: Path) -> None:
    _streams(backend)
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n1,x\n2,y\n")
    backend.execute(
        "CREATE TABLE IF NOT EXISTS datasets.conformance "
        "(a Int64, b String, _upload_id LowCardinality(String)) "
        "ENGINE = MergeTree ORDER BY _upload_id"
    )
    columns = [Column("a", "Int64"), Column("b", "String")]
    backend.load_file(
        "datasets.conformance", path, "CSVWithNames", columns, {"_upload_id": "u9"}
    )
    rows = backend.query_json(
        "SELECT a, b, _upload_id FROM datasets.conformance ORDER BY a"
    )
    assert rows == [
        {"a": 1, "b": "x", "_upload_id": "u9"},
        {"a": 2, "b": "y", "_upload_id": "u9"},
    ]


def test_penguins_load_with_stable_types(backend: Backend, corpus: Path) -> None:
    _streams(backend)
    tenant = _tenant()
    for name in ("penguins.csv", "penguins_jsonl.jsonl", "penguins_parquet.parquet"):
        record = datasets.load(
            backend,
            tenant=tenant,
            dataset="penguins",
            upload_id=f"u-{name}",
            filename=name,
            path=corpus / name,
        )
        assert record["rows"] == 344
        assert record["added_columns"] == []
    rows = backend.query_json(
        f"SELECT count() AS n, uniqExact(_upload_id) AS u, "
        f"countIf(body_mass_g IS NULL) AS missing "
        f"FROM datasets.{tenant}__penguins"
    )
    assert rows == [{"n": 1032, "u": 3, "missing": 6}]


class _Recorder:
    """Stands in for clickhouse-connect's client, keeping what it was sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def raw_insert(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))


def test_server_stream_is_one_insert_through_input(tmp_path: Path) -> None:
    """What the server backend sends: a statement ClickHouse parses, and the
    file's bytes in bounded blocks (no server needed to check either)."""
    from clickhouse_connect.driver._backend.httpcommon import embed_insert_query

    path = tmp_path / "big.csv"
    path.write_bytes(b"a,b\n" + b"1,x\n" * 600_000)
    server = object.__new__(ServerBackend)
    recorder = _Recorder()
    server._client = recorder  # type: ignore[assignment]
    columns = [Column("a", "Nullable(Int64)"), Column("b", "Nullable(String)")]
    server.load_file(
        "datasets.`t__x`",
        path,
        "CSVWithNames",
        columns,
        {"_upload_id": "u1"},
        {"format_csv_null_representation": "NA"},
    )

    ((args, kwargs),) = recorder.calls
    table, column_names, blocks = args
    body, statement = embed_insert_query(
        table, column_names, kwargs["fmt"], None, blocks
    )
    assert statement == (
        "INSERT INTO datasets.`t__x` (`a`, `b`, `_upload_id`) SELECT `a`, `b`, "
        "'u1' FROM input('`a` Nullable(Int64), `b` Nullable(String)') "
        "FORMAT CSVWithNames"
    )
    assert kwargs["settings"] == {"format_csv_null_representation": "NA"}
    sizes = [len(block) for block in body]
    assert max(sizes) <= 1024 * 1024 and sum(sizes) == path.stat().st_size

    engine = ChdbBackend(tmp_path / "chdb")
    try:
        ast = engine.query_text(f"EXPLAIN AST {statement}", "TSVRaw")
        assert "Function input" in ast
    finally:
        engine.close()
