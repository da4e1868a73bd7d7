"""The same bytes uploaded twice by one tenant are stored once."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from streams.client import WarehouseClient, upload_files
from streams.config import Settings
from streams.storage import ObjectStore, content_key


def test_a_tenants_duplicate_is_stored_once(
    upload: Callable[[dict[str, bytes]], dict[str, str]],
    warehouse: WarehouseClient,
    store: ObjectStore,
    tenant: str,
) -> None:
    data = os.urandom(300_000)
    first = upload({"report-v1.bin": data})["report-v1.bin"]
    warehouse.wait_for_results([first], timeout_s=60)
    second = upload({"report-copy.bin": data})["report-copy.bin"]
    results = warehouse.wait_for_results([first, second], timeout_s=60)

    assert results[first]["verdict"] == "CLEAN"
    assert results[second]["verdict"] == "CLEAN"
    assert results[first]["duplicate_of"] is None
    assert results[second]["duplicate_of"] == first
    assert results[first]["location"] == results[second]["location"]

    digest = results[first]["sha256"]
    stored = store.list_sizes(f"files/{tenant}/sha256/{digest[:2]}")
    assert stored == {digest: len(data)}
    assert store.digest(content_key(tenant, digest)).size == len(data)


def test_the_same_bytes_from_two_tenants_are_kept_apart(
    upload: Callable[[dict[str, bytes]], dict[str, str]],
    warehouse: WarehouseClient,
    tenant: str,
    issue: Callable[..., str],
    tmp_path: Path,
    settings: Settings,
) -> None:
    data = os.urandom(10_000)
    mine = upload({"shared.bin": data})["shared.bin"]
    warehouse.wait_for_results([mine], timeout_s=60)

    other = f"{tenant}-b"
    path = tmp_path / "shared.bin"
    path.write_bytes(data)
    other_auth = {"Authorization": f"Bearer {issue(other)}"}
    [theirs] = upload_files(
        [path],
        gateway_url=settings.gateway_url,
        headers=other_auth,
        chunk_size=1 << 20,
        show_progress=False,
    )
    other_warehouse = WarehouseClient(f"http://{settings.warehouse_listen}", other_auth)
    try:
        their_result = other_warehouse.wait_for_results(
            [theirs["upload_id"]], timeout_s=60
        )[theirs["upload_id"]]
        # Tenants cannot see each other's results.
        assert other_warehouse.results([mine]) == {}
    finally:
        other_warehouse.close()
    my_result = warehouse.results([mine])[mine]

    assert my_result["duplicate_of"] is None
    assert their_result["duplicate_of"] is None
    assert my_result["location"] == content_key(tenant, my_result["sha256"])
    assert their_result["location"] == content_key(other, my_result["sha256"])
