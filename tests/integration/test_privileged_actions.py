"""Privileged actions end to end: service keys, quarantine, dead letters.

Each action is taken the way a person would, with ``sluice`` and a token of
the right role, and followed to its effect (a key that uploads, then stops;
bytes that move or vanish) and to its audit record in the log of the tenant
it touched.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from ops.demo.corpus import EICAR
from streams import codec, storage, topics
from streams.client import WarehouseClient, upload_files
from streams.config import Settings
from streams.events import make_headers, now_ms
from streams.storage import ObjectStore

from .conftest import bearer, create_upload, eventually, run_sluice


@pytest.fixture
def admin(issue: Callable[..., str]) -> str:
    return issue("ops", "admin")


@pytest.fixture
def operator(issue: Callable[..., str]) -> str:
    return issue("ops", "operator")


def audit_rows(
    settings: Settings, auditor: str, where: str, count: int
) -> list[dict[str, Any]]:
    """The tenant's audit rows matching ``where``, once ``count`` have landed."""

    def rows() -> list[dict[str, Any]]:
        response = httpx.post(
            f"http://{settings.warehouse_listen}/v1/query",
            headers=bearer(auditor),
            json={
                "sql": f"SELECT * FROM sluice.audit_log FINAL WHERE {where} "
                "ORDER BY occurred_at"
            },
            timeout=30,
        )
        assert response.status_code == 200, response.text
        found = [json.loads(line) for line in response.text.splitlines()]
        return found if len(found) >= count else []

    result: list[dict[str, Any]] = eventually(rows, timeout_s=60)
    return result


def test_service_key_lifecycle_through_the_cli(
    admin: str,
    tenant: str,
    issue: Callable[..., str],
    gateway: httpx.Client,
    settings: Settings,
) -> None:
    created = run_sluice(
        admin, "keys", "create", "--tenant", tenant, "--role", "uploader",
        "--description", "billing feed",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    api_key = created.stdout.strip()
    # The key alone on stdout, what it is on stderr.
    assert api_key.startswith("sk_") and "\n" not in api_key
    key_id = api_key.split("_")[1]
    assert key_id in created.stderr and api_key not in created.stderr

    assert create_upload(gateway, bearer(api_key), 3).status_code == 201

    rotated = run_sluice(admin, "keys", "rotate", key_id, "--grace", "3600", "--json")
    assert rotated.returncode == 0, rotated.stderr
    successor = json.loads(rotated.stdout)
    new_key, new_id = successor["api_key"], successor["key"]["key_id"]
    assert successor["previous"] == key_id
    for key in (api_key, new_key):  # both work during the grace period
        assert create_upload(gateway, bearer(key), 3).status_code == 201

    listed = run_sluice(admin, "keys", "list", "--tenant", tenant, "--json")
    states = {k["key_id"]: k["state"] for k in json.loads(listed.stdout)}
    assert states == {key_id: "rotating", new_id: "active"}
    assert api_key.split("_", 2)[2] not in listed.stdout
    assert new_key.split("_", 2)[2] not in listed.stdout

    revoked = run_sluice(admin, "keys", "revoke", new_id)
    assert revoked.returncode == 0, revoked.stderr
    refused = create_upload(gateway, bearer(new_key), 3)
    assert refused.status_code == 401
    assert refused.json()["error"] == "key-revoked"

    tenants = json.loads(run_sluice(admin, "tenants", "list", "--json").stdout)
    assert {"tenant": tenant, "keys": 2, "active_keys": 1} in tenants

    # The tenant's auditor sees who did what to its keys, never a secret.
    rows = audit_rows(
        settings, issue(tenant, "auditor"), "startsWith(action, 'key.')", 3
    )
    assert [(r["action"], r["target"]) for r in rows] == [
        ("key.created", key_id),
        ("key.rotated", new_id),
        ("key.revoked", new_id),
    ]
    assert {r["actor"] for r in rows} == {"test-ops"}
    assert {r["detail"]["actor_tenant"] for r in rows} == {"ops"}
    assert rows[1]["detail"]["previous"] == key_id
    text = json.dumps(rows)
    for key in (api_key, new_key):
        assert key.split("_", 2)[2] not in text


def test_service_keys_never_carry_platform_roles(admin: str, tenant: str) -> None:
    for role in ("operator", "admin"):
        refused = run_sluice(
            admin, "keys", "create", "--tenant", tenant, "--role", role
        )
        assert refused.returncode == 1
        assert "(400)" in refused.stderr


def _quarantine(
    settings: Settings, tenant: str, issue: Callable[..., str], tmp_path: Path
) -> list[str]:
    token = issue(tenant)
    paths = []
    for n in range(2):
        path = tmp_path / f"eicar-{n}.com"
        path.write_bytes(EICAR)
        paths.append(path)
    uploaded = upload_files(
        paths,
        gateway_url=settings.gateway_url,
        headers=bearer(token),
        chunk_size=1 << 20,
        show_progress=False,
    )
    ids = [u["upload_id"] for u in uploaded]
    client = WarehouseClient(f"http://{settings.warehouse_listen}", bearer(token))
    try:
        results = client.wait_for_results(ids, timeout_s=60)
    finally:
        client.close()
    assert {results[i]["verdict"] for i in ids} == {"INFECTED"}
    return ids


def test_quarantine_release_and_delete(
    operator: str,
    tenant: str,
    issue: Callable[..., str],
    settings: Settings,
    store: ObjectStore,
    tmp_path: Path,
) -> None:
    released_id, deleted_id = _quarantine(settings, tenant, issue, tmp_path)

    listed = run_sluice(operator, "quarantine", "list", "--tenant", tenant, "--json")
    entries = json.loads(listed.stdout)
    digest = hashlib.sha256(EICAR).hexdigest()
    assert [(e["upload_id"], e["verdict"], e["sha256"]) for e in entries] == [
        (u, "INFECTED", digest) for u in sorted([released_id, deleted_id])
    ]
    assert EICAR.decode() not in listed.stdout  # metadata only, never contents

    released = run_sluice(
        operator, "quarantine", "release", released_id, "--tenant", tenant, "--json"
    )
    assert released.returncode == 0, released.stderr
    restated = json.loads(released.stdout)
    assert restated["location"] == storage.content_key(tenant, digest)
    # The actor is the token's subject; no command-line flag can name it.
    assert "released from quarantine by test-ops" in restated["reason"]
    assert EICAR.decode() not in released.stdout

    deleted = run_sluice(
        operator, "quarantine", "delete", deleted_id, "--tenant", tenant
    )
    assert deleted.returncode == 0, deleted.stderr
    assert not store.exists(storage.quarantine_key(tenant, deleted_id))
    again = run_sluice(operator, "quarantine", "delete", deleted_id, "--tenant", tenant)
    assert again.returncode == 1
    assert "(404)" in again.stderr

    rows = audit_rows(
        settings, issue(tenant, "auditor"), "startsWith(action, 'quarantine.')", 3
    )
    assert [(r["action"], r["target"], r["outcome"]) for r in rows] == [
        ("quarantine.released", released_id, "success"),
        ("quarantine.deleted", deleted_id, "success"),
        ("quarantine.deleted", deleted_id, "not-found"),
    ]
    assert rows[0]["detail"]["sha256"] == digest
    assert {r["actor"] for r in rows} == {"test-ops"}
    assert {r["detail"]["actor_tenant"] for r in rows} == {"ops"}

    # Readers of the tenant see the restated results.
    reader = WarehouseClient(
        f"http://{settings.warehouse_listen}", bearer(issue(tenant))
    )
    try:
        now = eventually(
            lambda: (
                r
                if (r := reader.results([released_id, deleted_id]))
                and r[deleted_id]["location"] == ""
                and r[released_id]["location"] == restated["location"]
                else None
            ),
            timeout_s=60,
        )
    finally:
        reader.close()
    assert "deleted from quarantine by test-ops" in now[deleted_id]["reason"]


def test_dead_letter_listings_never_carry_payloads(
    operator: str, settings: Settings, gateway: httpx.Client, tenant: str
) -> None:
    letters = json.loads(run_sluice(operator, "dlq", "list", "--json").stdout)
    over_http = gateway.get("/v1/ops/dead-letters", headers=bearer(operator)).json()

    for letter in [*letters, *over_http["dead_letters"]]:
        assert not {"value", "key", "headers"} & set(letter)


def test_replays_are_audited_under_the_letters_tenant(
    operator: str,
    settings: Settings,
    issue: Callable[..., str],
    gateway: httpx.Client,
    tenant: str,
) -> None:
    # A chunk whose tenant header disagrees with its record: dead-lettered
    # (VALIDATION) at once, under the header's tenant.
    upload_id = uuid.uuid4().hex
    data = b"poison"
    chunk = {
        "event_id": f"{upload_id}:0",
        "tenant": f"{tenant}-elsewhere",
        "upload_id": upload_id,
        "offset": 0,
        "length": len(data),
        "upload_length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "data": data,
        "filename": "poison.txt",
        "metadata": {},
        "produced_at": now_ms(),
    }
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    producer.produce(
        settings.topic(topics.CHUNKS),
        key=upload_id.encode(),
        value=codec.encode("Chunk", chunk),
        headers=make_headers(
            correlation_id=upload_id, tenant=tenant, upload_id=upload_id
        ),
    )
    assert producer.flush(30) == 0

    def letter() -> dict[str, Any] | None:
        listed = gateway.get("/v1/ops/dead-letters", headers=bearer(operator))
        mine = [d for d in listed.json()["dead_letters"] if d["upload_id"] == upload_id]
        return mine[0] if mine else None

    found = eventually(letter, timeout_s=60)
    assert (found["tenant"], found["category"]) == (tenant, "VALIDATION")
    replayed = run_sluice(operator, "dlq", "replay", found["event_id"], "--json")
    assert json.loads(replayed.stdout) == [found["event_id"]], replayed.stderr

    [row] = audit_rows(settings, issue(tenant, "auditor"), "action = 'dlq.replayed'", 1)
    assert row["target"] == upload_id
    assert row["actor"] == "test-ops"
    assert row["correlation_id"] == upload_id
    assert row["detail"]["dead_letter"] == found["event_id"]
    assert row["detail"]["actor_tenant"] == "ops"
