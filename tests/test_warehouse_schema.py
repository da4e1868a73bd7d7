"""Migrations on a real chdb: re-running is a no-op, version 1 upgrades."""

from __future__ import annotations

from pathlib import Path

from streams.warehouse.backend import ChdbBackend
from streams.warehouse.schema import LATEST, MIGRATIONS, TENANT_TABLES, migrate


def _objects(backend: ChdbBackend) -> dict[str, str]:
    rows = backend.query_json(
        "SELECT database, name, create_table_query FROM system.tables "
        "WHERE database IN ('sluice', 'datasets') ORDER BY database, name"
    )
    return {f"{r['database']}.{r['name']}": r["create_table_query"] for r in rows}


def _migrations(backend: ChdbBackend) -> list[dict[str, object]]:
    return backend.query_json(
        "SELECT version, description, applied_at FROM sluice.schema_migrations "
        "ORDER BY version"
    )


def test_running_migrations_twice_changes_nothing(tmp_path: Path) -> None:
    backend = ChdbBackend(tmp_path)
    try:
        assert migrate(backend) == LATEST
        objects, applied = _objects(backend), _migrations(backend)
        assert migrate(backend) == LATEST
        assert _objects(backend) == objects
        assert _migrations(backend) == applied
        assert [r["version"] for r in applied] == [v for v, _, _ in MIGRATIONS]
    finally:
        backend.close()


def test_version_1_upgrades_and_keeps_its_rows(tmp_path: Path) -> None:
    backend = ChdbBackend(tmp_path)
    try:
        assert migrate(backend, target=1) == 1
        assert "sluice.dataset_loads" not in _objects(backend)
        backend.execute(
            "INSERT INTO sluice.file_results (tenant, upload_id, filename, size, "
            "sha256, verdict, reason, findings, location, correlation_id, "
            "completed_at) VALUES ('acme', 'u1', 'a.csv', 3, "
            f"'{'0' * 64}', 'CLEAN', 'ok', [], 'files/x', 'c', now64(3))"
        )

        assert migrate(backend) == LATEST
        objects = _objects(backend)
        for name in TENANT_TABLES:
            assert f"sluice.{name}" in objects
        assert "TTL" in objects["sluice.audit_log"]
        assert "by_actor" in objects["sluice.audit_log"]
        rows = backend.query_json(
            "SELECT tenant, filename, version FROM sluice.file_versions"
        )
        assert rows == [{"tenant": "acme", "filename": "a.csv", "version": 1}]
    finally:
        backend.close()


def test_every_tenant_table_is_named_in_the_permission_matrix() -> None:
    from streams.warehouse.scope import TABLE_ACTIONS

    assert set(TABLE_ACTIONS) == TENANT_TABLES


def test_every_tenant_view_has_a_tenant_column(tmp_path: Path) -> None:
    backend = ChdbBackend(tmp_path)
    try:
        migrate(backend)
        for name in TENANT_TABLES:
            columns = backend.query_json(f"DESCRIBE sluice.{name}")
            assert "tenant" in {c["name"] for c in columns}, name
    finally:
        backend.close()
