"""The staging sweep removes abandoned uploads only."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agents.cleanup import sweep
from streams import storage
from streams.storage import ObjectStore


def test_sweep_removes_only_idle_unrouted_staging(tmp_path: Path) -> None:
    objects = ObjectStore(f"file://{tmp_path}")
    now = time.time()
    for upload_id in ("idle", "active", "routed"):
        objects.put(storage.part_key("acme", upload_id, 0), b"part")
    objects.put(storage.routed_key("acme", "routed"), b"{}")
    day_ago = now - 86_400
    for upload_id in ("idle", "routed"):
        part = tmp_path / storage.part_key("acme", upload_id, 0)
        os.utime(part, (day_ago, day_ago))

    expired = sweep(objects, expiry_s=3600, now=now)

    assert [(e.tenant, e.upload_id) for e in expired] == [("acme", "idle")]
    assert expired[0].idle_s >= 86_400 - 1
    assert objects.list_sizes("staging/acme").keys() == {"active", "routed"}
