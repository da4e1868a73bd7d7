"""Caller SQL is scoped to the caller's tenants, on a real chdb."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.errors import InvalidRequest
from streams.warehouse.backend import ChdbBackend
from streams.warehouse.schema import migrate
from streams.warehouse.scope import scoped_query


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbBackend]:
    chdb = ChdbBackend(Path(tmp_path_factory.mktemp("chdb")))
    migrate(chdb)
    chdb.execute(
        "INSERT INTO sluice.audit_log (event_id, occurred_at, tenant, actor, "
        "action, target, outcome, correlation_id) VALUES "
        "('e1', now64(3), 'acme', 'a', 'x', 't', 'ok', 'c'), "
        "('e2', now64(3), 'rival', 'b', 'x', 't', 'ok', 'c')"
    )
    chdb.execute(
        "CREATE TABLE datasets.acme__sales (n Int32) ENGINE = MergeTree ORDER BY n"
    )
    chdb.execute(
        "CREATE TABLE datasets.rival__sales (n Int32) ENGINE = MergeTree ORDER BY n"
    )
    chdb.execute("INSERT INTO datasets.acme__sales VALUES (1), (2)")
    yield chdb
    chdb.close()


def run(backend: ChdbBackend, sql: str, tenant: str = "acme") -> list[dict[str, str]]:
    return backend.query_json(scoped_query(sql, [tenant], backend))


def test_registry_rows_are_filtered_to_the_callers_tenant(
    backend: ChdbBackend,
) -> None:
    rows = run(backend, "SELECT tenant, event_id FROM sluice.audit_log FINAL")
    assert rows == [{"tenant": "acme", "event_id": "e1"}]
    nested = run(
        backend,
        "SELECT count() AS n FROM (SELECT * FROM sluice.audit_log "
        "UNION ALL SELECT * FROM sluice.audit_log) WHERE tenant != ''",
    )
    assert [int(r["n"]) for r in nested] == [2]


def test_a_query_cannot_lift_its_own_filter(backend: ChdbBackend) -> None:
    sql = "SELECT tenant FROM sluice.audit_log SETTINGS additional_table_filters = {}"
    assert run(backend, sql) == [{"tenant": "acme"}]


def test_own_datasets_are_readable(backend: ChdbBackend) -> None:
    rows = run(backend, "SELECT sum(n) AS total FROM datasets.acme__sales")
    assert [int(r["total"]) for r in rows] == [3]


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT * FROM datasets.rival__sales", "table"),
        ("SELECT * FROM system.tables", "table"),
        ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "table-function"),
        ("SELECT * FROM url('http://127.0.0.1:1/', 'CSV')", "table-function"),
        (
            "SELECT * FROM sluice.audit_log WHERE event_id IN "
            "(SELECT toString(n) FROM datasets.rival__sales)",
            "table",
        ),
        ("SELECT * FROM audit_log", "unqualified-table"),
        ("INSERT INTO sluice.audit_log SELECT * FROM sluice.audit_log", "read-only"),
        ("SELECT 1; DROP TABLE sluice.audit_log", "read-only"),
        ("SELECT FROM WHERE", "query"),
    ],
)
def test_queries_outside_the_scope_are_refused(
    backend: ChdbBackend, sql: str, reason: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        run(backend, sql)
    assert refused.value.reason == reason
