"""Versioned, idempotent migrations of the warehouse schema.

Every table that receives events is a ReplacingMergeTree ordered by the
event's deterministic identity, and every reader queries it with FINAL, so a
replayed topic restates rows instead of adding them.
"""

from __future__ import annotations

from streams.warehouse.backend import Backend

DATABASE = "sluice"
DATASETS = "datasets"

# Tables and views of DATABASE whose rows carry a tenant column and that
# callers may query (scoped to their tenants by streams.warehouse.scope).
TENANT_TABLES = frozenset(
    {"file_results", "file_stages", "audit_log", "dead_letters", "uploads"}
)

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "registry, stages, results, audit, dead letters",
        f"""
        CREATE TABLE IF NOT EXISTS {DATABASE}.file_results (
            tenant LowCardinality(String),
            upload_id String,
            filename String,
            size UInt64,
            sha256 FixedString(64),
            verdict LowCardinality(String),
            reason String,
            signature Nullable(String),
            engine Nullable(String),
            detected_mime Nullable(String),
            findings Array(String),
            location String,
            duplicate_of Nullable(String),
            dataset Nullable(String),
            correlation_id String,
            completed_at DateTime64(3, 'UTC')
        ) ENGINE = ReplacingMergeTree
        ORDER BY (tenant, upload_id);

        CREATE TABLE IF NOT EXISTS {DATABASE}.file_stages (
            tenant LowCardinality(String),
            upload_id String,
            stage LowCardinality(String),
            filename String,
            size UInt64,
            sha256 String,
            scan_status Nullable(String),
            signature Nullable(String),
            detected_mime Nullable(String),
            findings Array(String),
            duplicate_of Nullable(String),
            correlation_id String,
            occurred_at DateTime64(3, 'UTC')
        ) ENGINE = ReplacingMergeTree
        ORDER BY (tenant, upload_id, stage);

        CREATE TABLE IF NOT EXISTS {DATABASE}.audit_log (
            event_id String,
            occurred_at DateTime64(3, 'UTC'),
            tenant LowCardinality(String),
            actor String,
            action LowCardinality(String),
            target String,
            outcome LowCardinality(String),
            correlation_id String,
            detail Map(String, String)
        ) ENGINE = ReplacingMergeTree
        ORDER BY (tenant, event_id);

        CREATE TABLE IF NOT EXISTS {DATABASE}.dead_letters (
            event_id String,
            source_topic String,
            partition Int32,
            offset Int64,
            category LowCardinality(String),
            error String,
            attempts Int32,
            agent LowCardinality(String),
            tenant Nullable(String),
            upload_id Nullable(String),
            failed_at DateTime64(3, 'UTC')
        ) ENGINE = ReplacingMergeTree
        ORDER BY event_id;

        CREATE OR REPLACE VIEW {DATABASE}.uploads AS
        SELECT
            s.tenant AS tenant,
            s.upload_id AS upload_id,
            argMax(s.filename, s.occurred_at) AS filename,
            argMax(s.stage, s.occurred_at) AS last_stage,
            max(s.occurred_at) AS updated_at,
            any(r.verdict) AS verdict,
            any(r.reason) AS reason,
            any(r.location) AS location
        FROM {DATABASE}.file_stages AS s FINAL
        LEFT JOIN (SELECT * FROM {DATABASE}.file_results FINAL) AS r
            ON r.tenant = s.tenant AND r.upload_id = s.upload_id
        GROUP BY s.tenant, s.upload_id
        """,
    ),
)


def migrate(backend: Backend) -> int:
    """Apply every migration not yet applied; return the schema version."""
    backend.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    backend.execute(f"CREATE DATABASE IF NOT EXISTS {DATASETS}")
    backend.execute(
        f"""CREATE TABLE IF NOT EXISTS {DATABASE}.schema_migrations (
            version UInt32, description String,
            applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree ORDER BY version"""
    )
    applied = {
        int(row["version"])
        for row in backend.query_json(
            f"SELECT version FROM {DATABASE}.schema_migrations FINAL"
        )
    }
    for version, description, script in MIGRATIONS:
        if version in applied:
            continue
        for statement in script.split(";"):
            if statement.strip():
                backend.execute(statement)
        backend.execute(
            f"INSERT INTO {DATABASE}.schema_migrations (version, description) "
            f"VALUES ({version}, '{description}')"
        )
    return max(v for v, _, _ in MIGRATIONS)
