"""Caller SQL is scoped to the caller's roles and tenants, on a real chdb."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.auth import Principal
from streams.errors import InvalidRequest
from streams.permissions import Action, PermissionDenied
from streams.warehouse.backend import ChdbBackend
from streams.warehouse.schema import migrate
from streams.warehouse.scope import grants_for, scoped_query

# Reads every table a tenant's own people may read: data and audit.
EVERYTHING = ("reader", "auditor")


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbBackend]:
    chdb = ChdbBackend(Path(tmp_path_factory.mktemp("chdb")))
    migrate(chdb)
    chdb.execute(
        "INSERT INTO sluice.audit_log (event_id, occurred_at, tenant, actor, "
        "action, target, outcome, correlation_id) VALUES "
        "('e1', now64(3), 'acme', 'a', 'x', 't', 'ok', 'c'), "
        "('e2', now64(3), 'rival', 'b', 'x', 't', 'ok', 'c'), "
        "('e3', now64(3), '_platform', 'anonymous', 'auth.failed', 't', 'denied', 'c')"
    )
    chdb.execute(
        "INSERT INTO sluice.dead_letters (event_id, source_topic, partition, "
        "offset, category, error, attempts, agent, tenant, upload_id, failed_at) "
        "VALUES ('d1', 's', 0, 1, 'DECODE', 'x', 1, 'scan', NULL, NULL, now64(3)), "
        "('d2', 's', 0, 2, 'VALIDATION', 'x', 1, 'scan', 'rival', 'u', now64(3))"
    )
    chdb.execute(
        "INSERT INTO sluice.file_results (tenant, upload_id, filename, size, "
        "sha256, verdict, reason, location, correlation_id, completed_at) VALUES "
        f"('acme', 'u1', 'a.csv', 1, '{'a' * 64}', 'CLEAN', '', 'l', 'c', now64(3)), "
        f"('rival', 'u2', 'b.csv', 1, '{'b' * 64}', 'CLEAN', '', 'l', 'c', now64(3))"
    )
    chdb.execute(
        "CREATE TABLE datasets.acme__sales (n Int32) ENGINE = MergeTree ORDER BY n"
    )
    chdb.execute(
        "CREATE TABLE datasets.rival__sales (n Int32) ENGINE = MergeTree ORDER BY n"
    )
    chdb.execute("INSERT INTO datasets.acme__sales VALUES (1), (2)")
    # Tenant "acme_" owns "acme___x": it must never read as acme's.
    chdb.execute(
        "CREATE TABLE datasets.acme___x (n Int32) ENGINE = MergeTree ORDER BY n"
    )
    yield chdb
    chdb.close()


def caller(
    *roles: str, tenant: str = "acme", audit_tenants: set[str] | None = None
) -> Principal:
    return Principal(
        f"user-{tenant}",
        tenant,
        frozenset(roles or EVERYTHING),
        None if audit_tenants is None else frozenset(audit_tenants),
    )


def run(
    backend: ChdbBackend, sql: str, who: Principal | None = None
) -> list[dict[str, str]]:
    return backend.query_json(scoped_query(sql, grants_for(who or caller()), backend))


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


def test_auditors_read_the_audit_of_their_assigned_tenants(
    backend: ChdbBackend,
) -> None:
    sql = "SELECT tenant FROM sluice.audit_log FINAL ORDER BY tenant"
    own = caller("auditor")
    assigned = caller("auditor", audit_tenants={"rival", "_platform"})

    assert run(backend, sql, own) == [{"tenant": "acme"}]
    assert run(backend, sql, assigned) == [{"tenant": "_platform"}, {"tenant": "rival"}]


def test_an_auditor_assigned_nothing_reads_nothing(backend: ChdbBackend) -> None:
    with pytest.raises(InvalidRequest) as refused:
        run(
            backend,
            "SELECT * FROM sluice.audit_log",
            caller("auditor", audit_tenants=set()),
        )
    assert refused.value.reason == "scope"


def test_operators_read_every_dead_letter(backend: ChdbBackend) -> None:
    rows = run(
        backend,
        "SELECT event_id FROM sluice.dead_letters FINAL ORDER BY event_id",
        caller("operator"),
    )

    assert rows == [{"event_id": "d1"}, {"event_id": "d2"}]


def test_readers_see_their_results_only(backend: ChdbBackend) -> None:
    sql = "SELECT upload_id FROM sluice.file_results FINAL"

    assert run(backend, sql, caller("reader")) == [{"upload_id": "u1"}]
    assert run(backend, sql, caller("reader", tenant="rival")) == [{"upload_id": "u2"}]


@pytest.mark.parametrize(
    ("roles", "sql", "action"),
    [
        (("reader",), "SELECT * FROM sluice.audit_log", Action.AUDIT_READ),
        (("reader",), "SELECT * FROM sluice.dead_letters", Action.DEADLETTERS_READ),
        (("auditor",), "SELECT * FROM sluice.file_results", Action.RESULTS_READ),
        (("auditor",), "SELECT * FROM sluice.uploads", Action.RESULTS_READ),
        (("auditor",), "SELECT * FROM datasets.acme__sales", Action.DATASETS_READ),
        (("operator",), "SELECT * FROM sluice.file_stages", Action.RESULTS_READ),
        (("operator",), "SELECT * FROM sluice.audit_log", Action.AUDIT_READ),
        (("operator",), "SELECT * FROM datasets.rival__sales", Action.DATASETS_READ),
        (("uploader",), "SELECT * FROM datasets.acme__sales", Action.DATASETS_READ),
        (("uploader",), "SELECT 1", Action.RESULTS_READ),
        (("admin",), "SELECT * FROM sluice.audit_log", Action.AUDIT_READ),
        (
            ("operator",),
            "SELECT * FROM sluice.dead_letters WHERE upload_id IN "
            "(SELECT upload_id FROM sluice.file_results)",
            Action.RESULTS_READ,
        ),
    ],
)
def test_tables_outside_the_callers_roles_are_forbidden(
    backend: ChdbBackend, roles: tuple[str, ...], sql: str, action: Action
) -> None:
    with pytest.raises(PermissionDenied) as denied:
        run(backend, sql, caller(*roles))
    assert denied.value.action is action
    assert denied.value.status == 403


def test_a_dataset_prefix_is_not_another_tenants(backend: ChdbBackend) -> None:
    with pytest.raises(InvalidRequest) as refused:
        run(backend, "SELECT * FROM datasets.acme___x")
    assert refused.value.reason == "table"

    owner = caller("reader", tenant="acme_")
    rows = run(backend, "SELECT count() AS n FROM datasets.acme___x", owner)
    assert [int(r["n"]) for r in rows] == [0]


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
