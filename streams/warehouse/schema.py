"""Versioned, idempotent migrations of the warehouse schema.

Each migration is a numbered list of statements that are safe to run again
(``IF NOT EXISTS``, ``OR REPLACE``, ``MODIFY TTL``), recorded in
``sluice.schema_migrations`` once applied. Migrations only add: new tables,
columns, indexes, views and retention; a released migration is never edited,
so a warehouse at any version upgrades by running the ones it lacks.
``docs/warehouse.md`` explains the engine, key, partitioning and retention of
every table.

Event tables are ReplacingMergeTree ordered by the event's deterministic
identity; the loader inserts only identities a table does not hold yet, and
FINAL in every view absorbs the rare duplicate two racing loaders could add.
A result can be restated (quarantine release or delete): the loader writes
a version only when it is newer than the newest held, so the last inserted
row, the one FINAL reads, is always the newest.
"""

from __future__ import annotations

from streams.warehouse.backend import Backend, quote

DATABASE = "sluice"
DATASETS = "datasets"

# Tables and views of DATABASE whose rows carry a tenant column and that
# callers may query (scoped to their tenants by streams.warehouse.scope).
TENANT_TABLES = frozenset(
    {
        "file_results",
        "file_stages",
        "audit_log",
        "dead_letters",
        "dataset_loads",
        "uploads",
        "file_versions",
        "file_locations",
        "scan_results",
        "findings",
        "daily_volume",
        "audit_by_actor",
        "audit_by_target",
    }
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
    (
        2,
        "retention, lookup indexes, dataset loads, views for data teams and auditors",
        f"""
        ALTER TABLE {DATABASE}.file_stages
            MODIFY TTL toDateTime(occurred_at) + INTERVAL 90 DAY;

        ALTER TABLE {DATABASE}.dead_letters
            MODIFY TTL toDateTime(failed_at) + INTERVAL 90 DAY;

        ALTER TABLE {DATABASE}.audit_log
            MODIFY TTL toDateTime(occurred_at) + INTERVAL 7 YEAR;

        ALTER TABLE {DATABASE}.audit_log
            ADD INDEX IF NOT EXISTS by_actor actor TYPE bloom_filter GRANULARITY 4;

        ALTER TABLE {DATABASE}.audit_log
            ADD INDEX IF NOT EXISTS by_target target TYPE bloom_filter GRANULARITY 4;

        ALTER TABLE {DATABASE}.audit_log
            ADD INDEX IF NOT EXISTS by_time occurred_at TYPE minmax GRANULARITY 1;

        ALTER TABLE {DATABASE}.file_results
            ADD INDEX IF NOT EXISTS by_sha256 sha256 TYPE bloom_filter GRANULARITY 4;

        ALTER TABLE {DATABASE}.file_results
            ADD INDEX IF NOT EXISTS by_time completed_at TYPE minmax GRANULARITY 1;

        ALTER TABLE {DATABASE}.dead_letters
            ADD INDEX IF NOT EXISTS by_upload upload_id TYPE bloom_filter GRANULARITY 4;

        CREATE TABLE IF NOT EXISTS {DATABASE}.dataset_loads (
            tenant LowCardinality(String),
            dataset String,
            upload_id String,
            table_name String,
            format LowCardinality(String),
            rows UInt64,
            bytes UInt64,
            columns Array(String),
            types Array(String),
            added_columns Array(String),
            loaded_at DateTime64(3, 'UTC')
        ) ENGINE = ReplacingMergeTree
        ORDER BY (tenant, dataset, upload_id);

        CREATE OR REPLACE VIEW {DATABASE}.uploads AS
        SELECT
            s.tenant AS tenant,
            s.upload_id AS upload_id,
            argMax(s.filename, s.occurred_at) AS filename,
            max(s.size) AS size,
            argMax(s.sha256, s.occurred_at) AS sha256,
            if(any(r.upload_id) != '', 'ROUTED', argMax(s.stage, s.occurred_at))
                AS stage,
            min(s.occurred_at) AS first_seen_at,
            greatest(max(s.occurred_at), any(r.completed_at)) AS updated_at,
            nullIf(any(r.verdict), '') AS verdict,
            nullIf(any(r.reason), '') AS reason,
            nullIf(any(r.location), '') AS location,
            any(r.dataset) AS dataset,
            any(r.duplicate_of) AS duplicate_of,
            any(s.correlation_id) AS correlation_id
        FROM {DATABASE}.file_stages AS s FINAL
        LEFT JOIN (SELECT * FROM {DATABASE}.file_results FINAL) AS r
            ON r.tenant = s.tenant AND r.upload_id = s.upload_id
        GROUP BY s.tenant, s.upload_id;

        CREATE OR REPLACE VIEW {DATABASE}.file_versions AS
        SELECT
            tenant,
            filename,
            row_number() OVER (
                PARTITION BY tenant, filename ORDER BY completed_at, upload_id
            ) AS version,
            upload_id,
            size,
            sha256,
            verdict,
            location,
            duplicate_of,
            completed_at
        FROM {DATABASE}.file_results FINAL;

        CREATE OR REPLACE VIEW {DATABASE}.file_locations AS
        SELECT
            tenant,
            location,
            any(sha256) AS sha256,
            max(size) AS size,
            argMin(upload_id, completed_at) AS first_upload_id,
            count() AS uploads,
            groupUniqArray(filename) AS filenames,
            min(completed_at) AS first_at,
            max(completed_at) AS last_at
        FROM {DATABASE}.file_results FINAL
        GROUP BY tenant, location;

        CREATE OR REPLACE VIEW {DATABASE}.scan_results AS
        SELECT
            tenant,
            upload_id,
            filename,
            size,
            sha256,
            scan_status,
            signature,
            occurred_at AS scanned_at
        FROM {DATABASE}.file_stages FINAL
        WHERE stage = 'SCANNED';

        CREATE OR REPLACE VIEW {DATABASE}.findings AS
        SELECT
            tenant,
            upload_id,
            filename,
            verdict,
            finding,
            completed_at
        FROM {DATABASE}.file_results FINAL
        ARRAY JOIN findings AS finding;

        CREATE OR REPLACE VIEW {DATABASE}.daily_volume AS
        SELECT
            tenant,
            toDate(completed_at) AS day,
            count() AS uploads,
            sum(size) AS bytes,
            countIf(verdict = 'CLEAN') AS clean,
            countIf(verdict = 'INFECTED') AS infected,
            countIf(verdict = 'SUSPICIOUS') AS suspicious,
            countIf(verdict = 'REJECTED') AS rejected,
            countIf(duplicate_of IS NOT NULL) AS duplicates
        FROM {DATABASE}.file_results FINAL
        GROUP BY tenant, day;

        CREATE OR REPLACE VIEW {DATABASE}.audit_by_actor AS
        SELECT
            tenant, actor, occurred_at, action, target, outcome,
            correlation_id, detail, event_id
        FROM {DATABASE}.audit_log FINAL
        ORDER BY tenant, actor, occurred_at, event_id;

        CREATE OR REPLACE VIEW {DATABASE}.audit_by_target AS
        SELECT
            tenant, target, occurred_at, action, actor, outcome,
            correlation_id, detail, event_id
        FROM {DATABASE}.audit_log FINAL
        ORDER BY tenant, target, occurred_at, event_id
        """,
    ),
)

LATEST = max(version for version, _, _ in MIGRATIONS)


def statements(script: str) -> list[str]:
    """A migration's statements (no statement contains a semicolon)."""
    return [s.strip() for s in script.split(";") if s.strip()]


def applied_versions(backend: Backend) -> set[int]:
    """Versions recorded in schema_migrations (empty before the first)."""
    exists = backend.query_json(
        f"SELECT count() AS n FROM system.tables WHERE database = {quote(DATABASE)} "
        "AND name = 'schema_migrations'"
    )
    if not int(exists[0]["n"]):
        return set()
    rows = backend.query_json(f"SELECT version FROM {DATABASE}.schema_migrations FINAL")
    return {int(row["version"]) for row in rows}


def migrate(backend: Backend, target: int = LATEST) -> int:
    """Apply every migration up to ``target`` not yet applied; return the version.

    Re-running is a no-op. A run interrupted half-way re-runs the unfinished
    migration whole, which is safe because each statement is idempotent.
    """
    backend.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    backend.execute(f"CREATE DATABASE IF NOT EXISTS {DATASETS}")
    backend.execute(
        f"""CREATE TABLE IF NOT EXISTS {DATABASE}.schema_migrations (
            version UInt32, description String,
            applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree ORDER BY version"""
    )
    applied = applied_versions(backend)
    for version, description, script in MIGRATIONS:
        if version in applied or version > target:
            continue
        for statement in statements(script):
            backend.execute(statement)
        backend.execute(
            f"INSERT INTO {DATABASE}.schema_migrations (version, description) "
            f"VALUES ({version}, {quote(description)})"
        )
    return max((v for v in applied_versions(backend) if v <= LATEST), default=0)
