"""With clamd down no file passes: files dead-letter as SCAN_UNAVAILABLE, and a
replay once clamd is back gives each file its right verdict."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import pytest

from ops.demo.corpus import EICAR
from streams.client import WarehouseClient
from streams.config import Settings

from .conftest import eventually, sluice, stack_script


@pytest.fixture
def clamd_stopped() -> Iterator[None]:
    stack_script("clamd.sh", "stop")
    try:
        yield
    finally:
        stack_script("clamd.sh", "start")


def test_clamd_outage_fails_closed_then_replay_finishes(
    clamd_stopped: None,
    upload: Callable[[dict[str, bytes]], dict[str, str]],
    warehouse: WarehouseClient,
    issue: Callable[..., str],
    tenant: str,
    settings: Settings,
) -> None:
    files = {
        "clean.txt": b"nothing to see here\n" * 100,
        "eicar.com": EICAR,
        "random.bin": os.urandom(50_000),
    }
    uploads = upload(files)
    operator = issue(tenant, "operator")

    def dead_lettered() -> list[dict[str, object]]:
        letters = json.loads(sluice("dlq", "list", "--json", token=operator))
        mine = [
            d
            for d in letters
            if d["upload_id"] in uploads.values() and not d["replayed"]
        ]
        return mine if len(mine) == len(files) else []

    letters = eventually(dead_lettered, timeout_s=120)
    assert {d["category"] for d in letters} == {"SCAN_UNAVAILABLE"}
    assert {d["agent"] for d in letters} == {"scan"}
    assert all(d["attempts"] == settings.retry_attempts for d in letters)
    # Nothing was marked clean (or anything else) while clamd was down.
    assert warehouse.results(list(uploads.values())) == {}

    stack_script("clamd.sh", "start")
    sluice("dlq", "replay", "--category", "SCAN_UNAVAILABLE", token=operator)

    results = warehouse.wait_for_results(list(uploads.values()), timeout_s=120)
    verdicts = {name: results[uid]["verdict"] for name, uid in uploads.items()}
    assert verdicts == {
        "clean.txt": "CLEAN",
        "eicar.com": "INFECTED",
        "random.bin": "CLEAN",
    }
    replayed = json.loads(sluice("dlq", "list", "--json", token=operator))
    assert all(d["replayed"] for d in replayed if d["upload_id"] in uploads.values())
