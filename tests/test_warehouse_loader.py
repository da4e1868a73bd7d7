"""What the registry loader writes, on a real chdb: identities once, and for
results only versions newer than the newest held, merged or not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.warehouse.backend import ChdbBackend
from streams.warehouse.loader import AUDIT, RESULTS, absent, audit_row, result_row
from streams.warehouse.schema import migrate


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[ChdbBackend]:
    engine = ChdbBackend(tmp_path)
    migrate(engine)
    yield engine
    engine.close()


def _result(at: int, reason: str) -> dict[str, Any]:
    return result_row(
        {
            "tenant": "acme",
            "upload_id": "u1",
            "filename": "a.bin",
            "size": 1,
            "sha256": "0" * 64,
            "verdict": "INFECTED",
            "reason": reason,
            "signature": None,
            "engine": None,
            "detected_mime": None,
            "findings": [],
            "location": "quarantine/acme/u1",
            "duplicate_of": None,
            "dataset": None,
            "correlation_id": "c",
            "completed_at": at,
        }
    )


def _write(backend: ChdbBackend, rows: list[dict[str, Any]]) -> None:
    backend.insert_rows("sluice.file_results", absent(backend, RESULTS, rows))


def _reasons(backend: ChdbBackend, final: bool = False) -> list[str]:
    rows = backend.query_json(
        f"SELECT reason FROM sluice.file_results {'FINAL' if final else ''} "
        "ORDER BY completed_at"
    )
    return [str(r["reason"]) for r in rows]


def test_a_replayed_identity_is_written_once(backend: ChdbBackend) -> None:
    event = audit_row(
        {
            "event_id": "e1",
            "occurred_at": 1_767_225_600_000,
            "tenant": "acme",
            "actor": "a",
            "action": "x",
            "target": "t",
            "outcome": "ok",
            "correlation_id": "c",
            "detail": {},
        }
    )
    assert absent(backend, AUDIT, [event, dict(event)]) == [event]
    backend.insert_rows("sluice.audit_log", [event])
    assert absent(backend, AUDIT, [event]) == []


@pytest.mark.parametrize("merged", [False, True])
def test_a_restated_result_survives_a_replay(
    backend: ChdbBackend, merged: bool
) -> None:
    original, restated = _result(1000, "infected"), _result(2000, "released")
    _write(backend, [original])
    _write(backend, [restated])
    assert _reasons(backend) == ["infected", "released"]
    if merged:
        backend.execute("OPTIMIZE TABLE sluice.file_results FINAL")
        assert _reasons(backend) == ["released"]

    # The topic replayed from offset 0: both versions again, in order.
    _write(backend, [original, restated])
    assert _reasons(backend, final=True) == ["released"]
    assert len(_reasons(backend)) == (1 if merged else 2)


def test_one_batch_keeps_only_its_newest_version(backend: ChdbBackend) -> None:
    rows = absent(backend, RESULTS, [_result(1000, "infected"), _result(2000, "x")])
    assert [r["reason"] for r in rows] == ["x"]
