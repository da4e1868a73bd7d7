"""Quarantine: sealed at rest, listed, released and deleted by operators, audited."""

from __future__ import annotations

import json
from collections.abc import Callable

from ops.demo.corpus import EICAR
from streams.client import WarehouseClient
from streams.config import Settings
from streams.storage import ObjectStore, content_key

from .conftest import eventually, sluice


def test_quarantine_is_sealed_and_operators_release_or_delete(
    upload: Callable[[dict[str, bytes]], dict[str, str]],
    warehouse: WarehouseClient,
    store: ObjectStore,
    tenant: str,
    issue: Callable[..., str],
    settings: Settings,
) -> None:
    # Operators act with their own tokens: the actor is the token's subject.
    alice = issue("ops", "operator", subject="alice")
    bob = issue("ops", "operator", subject="bob")
    eicar_padded = EICAR + b"\n" * 3
    uploads = upload({"eicar.com": EICAR, "also-eicar.txt": eicar_padded})
    results = warehouse.wait_for_results(list(uploads.values()), timeout_s=60)
    first, second = uploads["eicar.com"], uploads["also-eicar.txt"]
    location = results[first]["location"]
    assert location == f"quarantine/{tenant}/{first}"

    # At rest the bytes are sealed: the signature is not in the object.
    raw = b"".join(store.read_blocks(location))
    assert EICAR not in raw and raw.startswith(b"SLQ1")

    listed = json.loads(
        sluice("quarantine", "list", "--tenant", tenant, "--json", token=alice)
    )
    assert {e["upload_id"]: e["verdict"] for e in listed} == {
        first: "INFECTED",
        second: "INFECTED",
    }

    sluice("quarantine", "release", first, "--tenant", tenant, token=alice)
    released = content_key(tenant, results[first]["sha256"])
    assert b"".join(store.read_blocks(released)) == EICAR
    assert not store.exists(location)

    sluice("quarantine", "delete", second, "--tenant", tenant, token=bob)
    assert not store.exists(f"quarantine/{tenant}/{second}")

    def restated() -> dict[str, dict[str, object]]:
        now = warehouse.results([first, second])
        done = now[first]["location"] == released and now[second]["location"] == ""
        return now if done else {}

    now = eventually(restated, timeout_s=30)
    assert "released from quarantine by alice" in str(now[first]["reason"])
    assert "deleted from quarantine by bob" in str(now[second]["reason"])

    # The tenant's auditor reads its audit log (readers do not).
    auditor = WarehouseClient(
        f"http://{settings.warehouse_listen}",
        {"Authorization": f"Bearer {issue(tenant, 'auditor')}"},
    )

    def audited() -> list[dict[str, str]]:
        rows = auditor.rows(
            "SELECT actor, action, target, outcome FROM sluice.audit_log FINAL "
            "WHERE action LIKE 'quarantine.%' ORDER BY action"
        )
        return rows if len(rows) == 2 else []

    assert eventually(audited, timeout_s=30) == [
        {
            "actor": "bob",
            "action": "quarantine.deleted",
            "target": second,
            "outcome": "success",
        },
        {
            "actor": "alice",
            "action": "quarantine.released",
            "target": first,
            "outcome": "success",
        },
    ]
    auditor.close()
    listed = json.loads(
        sluice("quarantine", "list", "--tenant", tenant, "--json", token=alice)
    )
    assert listed == []
