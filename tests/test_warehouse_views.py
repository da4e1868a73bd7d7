"""The views data teams and auditors read, on a real chdb, scoped per tenant."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.auth import Principal
from streams.permissions import Action
from streams.warehouse.backend import ChdbBackend
from streams.warehouse.loader import audit_row, result_row, stage_row
from streams.warehouse.schema import migrate
from streams.warehouse.scope import TABLE_ACTIONS, grants_for, scoped_query

DAY = 86_400_000
# Two days ago at midnight UTC: recent enough for every table's retention.
T0 = (int(time.time() * 1000) // DAY - 2) * DAY
DAY_0 = time.strftime("%Y-%m-%d", time.gmtime(T0 / 1000))
DAY_1 = time.strftime("%Y-%m-%d", time.gmtime((T0 + DAY) / 1000))


def _result(tenant: str, upload_id: str, at: int, **extra: Any) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "upload_id": upload_id,
        "filename": "report.csv",
        "size": 100,
        "sha256": upload_id[0] * 64,
        "verdict": "CLEAN",
        "reason": "no threats found",
        "signature": None,
        "engine": "ClamAV 1.0",
        "detected_mime": "text/csv",
        "findings": [],
        "location": f"files/{tenant}/sha256/{upload_id[0] * 64}",
        "duplicate_of": None,
        "dataset": "report",
        "correlation_id": f"c-{upload_id}",
        "completed_at": at,
    } | extra


def _stage(tenant: str, upload_id: str, stage: str, at: int) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "upload_id": upload_id,
        "stage": stage,
        "filename": "report.csv",
        "size": 100,
        "sha256": upload_id[0] * 64,
        "scan": {"status": "CLEAN", "signature": None, "engine": "ClamAV"}
        if stage != "ASSEMBLED"
        else None,
        "detected_mime": None,
        "findings": [],
        "duplicate_of": None,
        "correlation_id": f"c-{upload_id}",
        "occurred_at": at,
    }


def _audit(tenant: str, event_id: str, actor: str, target: str, at: int) -> dict:
    return {
        "event_id": event_id,
        "occurred_at": at,
        "tenant": tenant,
        "actor": actor,
        "action": "file.routed",
        "target": target,
        "outcome": "clean",
        "correlation_id": "c",
        "detail": {},
    }


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbBackend]:
    engine = ChdbBackend(Path(tmp_path_factory.mktemp("chdb")))
    migrate(engine)
    engine.insert_rows(
        "sluice.file_results",
        [
            result_row(_result("acme", "aaa1", T0)),
            result_row(_result("acme", "bbb2", T0 + 1000)),
            result_row(
                _result(
                    "acme",
                    "ccc3",
                    T0 + DAY,
                    verdict="SUSPICIOUS",
                    findings=["type-mismatch", "macro"],
                    location="quarantine/acme/ccc3",
                    dataset=None,
                )
            ),
            result_row(_result("rival", "ddd4", T0)),
        ],
    )
    engine.insert_rows(
        "sluice.file_stages",
        [
            stage_row(_stage("acme", "aaa1", "ASSEMBLED", T0 - 2000)),
            stage_row(_stage("acme", "aaa1", "SCANNED", T0 - 1000)),
            stage_row(_stage("acme", "eee5", "ASSEMBLED", T0 + 5000)),
            stage_row(_stage("rival", "ddd4", "SCANNED", T0)),
        ],
    )
    engine.insert_rows(
        "sluice.audit_log",
        [
            audit_row(_audit("acme", "e1", "system:route", "aaa1", T0)),
            audit_row(_audit("acme", "e2", "alice", "aaa1", T0 + 10)),
            audit_row(_audit("acme", "e3", "system:route", "bbb2", T0 + 20)),
            audit_row(_audit("rival", "e4", "system:route", "ddd4", T0)),
        ],
    )
    yield engine
    engine.close()


def rows(backend: ChdbBackend, sql: str, tenant: str = "acme") -> list[dict[str, Any]]:
    """Rows as a reader and auditor of ``tenant`` sees them."""
    who = Principal(f"user-{tenant}", tenant, frozenset({"reader", "auditor"}))
    return backend.query_json(scoped_query(sql, grants_for(who), backend))


def test_uploads_is_the_current_state_of_every_upload(backend: ChdbBackend) -> None:
    state = rows(
        backend,
        "SELECT upload_id, stage, verdict FROM sluice.uploads ORDER BY upload_id",
    )
    assert state == [
        {"upload_id": "aaa1", "stage": "ROUTED", "verdict": "CLEAN"},
        {"upload_id": "eee5", "stage": "ASSEMBLED", "verdict": None},
    ]


def test_daily_volume_counts_verdicts_per_day(backend: ChdbBackend) -> None:
    days = rows(
        backend,
        "SELECT day, uploads, bytes, clean, suspicious FROM sluice.daily_volume "
        "ORDER BY day",
    )
    assert days == [
        {"day": DAY_0, "uploads": 2, "bytes": 200, "clean": 2, "suspicious": 0},
        {"day": DAY_1, "uploads": 1, "bytes": 100, "clean": 0, "suspicious": 1},
    ]


def test_versions_locations_scans_and_findings(backend: ChdbBackend) -> None:
    versions = rows(
        backend,
        "SELECT version, upload_id FROM sluice.file_versions ORDER BY version",
    )
    assert versions == [
        {"version": 1, "upload_id": "aaa1"},
        {"version": 2, "upload_id": "bbb2"},
        {"version": 3, "upload_id": "ccc3"},
    ]
    locations = rows(
        backend, "SELECT location, uploads FROM sluice.file_locations ORDER BY location"
    )
    assert [r["location"] for r in locations][-1] == "quarantine/acme/ccc3"
    scans = rows(backend, "SELECT upload_id, scan_status FROM sluice.scan_results")
    assert scans == [{"upload_id": "aaa1", "scan_status": "CLEAN"}]
    found = rows(
        backend, "SELECT upload_id, finding FROM sluice.findings ORDER BY finding"
    )
    assert found == [
        {"upload_id": "ccc3", "finding": "macro"},
        {"upload_id": "ccc3", "finding": "type-mismatch"},
    ]


def test_audit_trails_by_actor_and_by_target(backend: ChdbBackend) -> None:
    by_actor = rows(
        backend,
        "SELECT event_id FROM sluice.audit_by_actor WHERE actor = 'system:route'",
    )
    assert by_actor == [{"event_id": "e1"}, {"event_id": "e3"}]
    by_target = rows(
        backend, "SELECT actor FROM sluice.audit_by_target WHERE target = 'aaa1'"
    )
    assert by_target == [{"actor": "system:route"}, {"actor": "alice"}]


# Dead letters are the platform operators' (every tenant's), not a tenant's.
TENANT_READABLE = sorted(
    name for name, action in TABLE_ACTIONS.items() if action != Action.DEADLETTERS_READ
)


@pytest.mark.parametrize("name", TENANT_READABLE)
def test_no_view_shows_another_tenants_rows(backend: ChdbBackend, name: str) -> None:
    seen = rows(backend, f"SELECT DISTINCT tenant FROM sluice.{name}", "rival")
    assert seen in ([], [{"tenant": "rival"}])
