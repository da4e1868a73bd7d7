"""Declared routing rules and priority lanes, through the whole pipeline.

The test stack runs with tests/fixtures/routes.json and a bulk threshold of
1 MiB (ops/scripts/test.sh).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from streams import topics
from streams.client import WarehouseClient, upload_files
from streams.config import Settings
from streams.storage import ObjectStore

from .conftest import read_topic

INVOICES = b"invoice,amount\n1,10.5\n2,99.0\n"


def test_rules_choose_the_layout_and_the_dataset(
    issue: Callable[..., str],
    settings: Settings,
    store: ObjectStore,
    tmp_path: Path,
) -> None:
    tenant = "routing-acme"
    auth = {"Authorization": f"Bearer {issue(tenant)}"}
    invoice = tmp_path / "march.csv"
    invoice.write_bytes(INVOICES + tmp_path.name.encode() + b",1\n")
    other = tmp_path / "notes.csv"
    other.write_bytes(b"a,b\n" + tmp_path.name.encode() + b",2\n")

    [routed] = upload_files(
        [invoice],
        gateway_url=settings.gateway_url,
        headers=auth,
        chunk_size=1 << 20,
        show_progress=False,
        metadata={"kind": "invoice"},
    )
    [plain] = upload_files(
        [other],
        gateway_url=settings.gateway_url,
        headers=auth,
        chunk_size=1 << 20,
        show_progress=False,
    )
    warehouse = WarehouseClient(f"http://{settings.warehouse_listen}", auth)
    try:
        ids = [routed["upload_id"], plain["upload_id"]]
        results = warehouse.wait_for_results(ids, timeout_s=60)
        first, second = results[ids[0]], results[ids[1]]
        digest = first["sha256"]
        assert first["location"] == f"files/{tenant}/invoices/{digest[:2]}/{digest}.csv"
        assert first["dataset"] == "invoices"
        assert store.digest(first["location"]).sha256 == digest
        assert second["location"].startswith(f"files/{tenant}/sha256/")
        assert second["dataset"] is None
    finally:
        warehouse.close()


def test_bulk_files_take_the_bulk_lane(
    upload: Callable[[dict[str, bytes]], dict[str, str]],
    warehouse: WarehouseClient,
    settings: Settings,
) -> None:
    small, large = b"small\n" * 10, b"large\n" * (400 * 1024)  # 2.4 MiB
    uploads = upload({"small.txt": small, "large.txt": large})
    results = warehouse.wait_for_results(list(uploads.values()), timeout_s=60)
    assert {r["verdict"] for r in results.values()} == {"CLEAN"}

    for name, lane in (("small.txt", "interactive"), ("large.txt", "bulk")):
        other = "bulk" if lane == "interactive" else "interactive"
        for stage in topics.LANED:
            mine = {
                r["upload_id"]
                for r in read_topic(settings, topics.for_lane(stage, lane), "FileStage")
            }
            theirs = {
                r["upload_id"]
                for r in read_topic(
                    settings, topics.for_lane(stage, other), "FileStage"
                )
            }
            assert uploads[name] in mine, (name, stage)
            assert uploads[name] not in theirs, (name, stage)
