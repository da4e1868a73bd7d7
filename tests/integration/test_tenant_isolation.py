"""Tenant A can neither see nor touch tenant B's data, by any path.

Two tenants each upload a CSV (a dataset) and an EICAR file (quarantined),
and B keeps one upload open. Each test takes one path (tus, receipts,
warehouse upload status, queries over results, stages, datasets and the
audit log, storage, the command line, service keys, Kafka events) and
checks that A's credentials reach nothing of B's, and that another
tenant's thing looks exactly like a missing one.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
from streams.service_keys import ServiceKeyStore
from streams.storage import ObjectStore

from .conftest import TUS, bearer, create_upload, eventually, patch_upload, run_sluice

CSV = b"region,amount\nnorth,10\nsouth,20\n"


@dataclass(frozen=True)
class Tenant:
    name: str
    reader: dict[str, str]  # uploader + reader
    auditor: dict[str, str]
    token: str
    csv: str  # upload id, CLEAN, datasets.<name>__sales
    eicar: str  # upload id, INFECTED
    results: dict[str, dict[str, Any]]


def _tenant(
    settings: Settings, issue: Callable[..., str], folder: Path, name: str
) -> Tenant:
    token = issue(name, "uploader", "reader")
    (folder / "sales.csv").write_bytes(CSV + name.encode() + b",1\n")
    (folder / "eicar.com").write_bytes(EICAR)
    uploaded = upload_files(
        [folder / "sales.csv", folder / "eicar.com"],
        gateway_url=settings.gateway_url,
        headers=bearer(token),
        chunk_size=1 << 20,
        show_progress=False,
    )
    ids = {Path(u["path"]).name: u["upload_id"] for u in uploaded}
    client = WarehouseClient(f"http://{settings.warehouse_listen}", bearer(token))
    try:
        results = client.wait_for_results(list(ids.values()), timeout_s=120)
    finally:
        client.close()
    assert len(results) == 2, results
    return Tenant(
        name=name,
        reader=bearer(token),
        auditor=bearer(issue(name, "auditor")),
        token=token,
        csv=ids["sales.csv"],
        eicar=ids["eicar.com"],
        results=results,
    )


@pytest.fixture(scope="module")
def tenants(
    settings: Settings,
    issue: Callable[..., str],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Tenant, Tenant]:
    suffix = uuid.uuid4().hex[:8]
    a = _tenant(settings, issue, tmp_path_factory.mktemp("a"), f"a{suffix}")
    b = _tenant(settings, issue, tmp_path_factory.mktemp("b"), f"b{suffix}")
    return a, b


@pytest.fixture(scope="module")
def open_upload(tenants: tuple[Tenant, Tenant], settings: Settings) -> str:
    """An upload of B's still receiving bytes: the tempting kind."""
    _, b = tenants
    with httpx.Client(base_url=settings.gateway_url, timeout=30) as client:
        created = create_upload(client, b.reader, 10)
    assert created.status_code == 201
    return str(created.headers["Location"])


@pytest.fixture
def warehouse_http(settings: Settings) -> httpx.Client:
    return httpx.Client(base_url=f"http://{settings.warehouse_listen}", timeout=60)


def _missing(location: str) -> str:
    return location.rsplit("/", 1)[0] + "/" + uuid.uuid4().hex


def _same_refusal(first: httpx.Response, second: httpx.Response) -> None:
    assert (first.status_code, first.content) == (second.status_code, second.content)


def _query(
    client: httpx.Client, auth: dict[str, str], sql: str
) -> list[dict[str, Any]]:
    response = client.post("/v1/query", headers=auth, json={"sql": sql})
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


# --- The gateway --------------------------------------------------------------


def test_tus_on_another_tenants_upload_is_404_like_a_missing_one(
    tenants: tuple[Tenant, Tenant], open_upload: str, gateway: httpx.Client
) -> None:
    a, b = tenants
    missing = _missing(open_upload)

    for send in (
        lambda url: gateway.head(url, headers={**TUS, **a.reader}),
        lambda url: patch_upload(gateway, a.reader, url, 0, b"0123456789"),
        lambda url: gateway.delete(url, headers={**TUS, **a.reader}),
    ):
        theirs, nobodys = send(open_upload), send(missing)
        assert theirs.status_code == 404
        _same_refusal(theirs, nobodys)

    # B's upload is untouched: still there, nothing written.
    head = gateway.head(open_upload, headers={**TUS, **b.reader})
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "0"


def test_cross_tenant_attempts_are_audited_for_the_owner_only(
    tenants: tuple[Tenant, Tenant],
    open_upload: str,
    gateway: httpx.Client,
    warehouse_http: httpx.Client,
) -> None:
    a, b = tenants
    upload_id = open_upload.rsplit("/", 1)[-1]
    probe = gateway.head(
        open_upload, headers={**TUS, **a.reader, "X-Correlation-ID": f"probe-{a.name}"}
    )
    assert probe.status_code == 404
    sql = (
        "SELECT tenant, target, actor, detail['actor_tenant'] AS from_tenant "
        "FROM sluice.audit_log FINAL WHERE action = 'access.cross_tenant' "
        f"AND correlation_id = 'probe-{a.name}'"
    )

    rows = eventually(lambda: _query(warehouse_http, b.auditor, sql))

    assert rows == [
        {
            "tenant": b.name,
            "target": upload_id,
            "actor": f"test-{a.name}",
            "from_tenant": a.name,
        }
    ]
    assert _query(warehouse_http, a.auditor, sql) == []


def test_a_busy_upload_of_another_tenant_is_404_not_423(
    tenants: tuple[Tenant, Tenant], settings: Settings
) -> None:
    a, b = tenants
    with httpx.Client(base_url=settings.gateway_url, timeout=30) as client:
        location = create_upload(client, b.reader, 10).headers["Location"]
    started = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b"01234"
        started.set()
        time.sleep(2)  # B's PATCH holds the upload's lock meanwhile
        yield b"56789"

    def owner_patch() -> httpx.Response:
        with httpx.Client(timeout=30) as client:
            return client.patch(
                location,
                headers={
                    **TUS,
                    **b.reader,
                    "Upload-Offset": "0",
                    "Content-Type": "application/offset+octet-stream",
                },
                content=slow_body(),
            )

    with ThreadPoolExecutor(max_workers=1) as pool:
        owners = pool.submit(owner_patch)
        assert started.wait(10)
        time.sleep(0.3)
        with httpx.Client(timeout=30) as client:
            stranger = patch_upload(client, a.reader, location, 0, b"x")
        owner = owners.result()

    assert stranger.status_code == 404
    assert owner.status_code == 204
    assert owner.headers["Upload-Offset"] == "10"


def test_gateway_receipt_of_another_tenants_upload_is_404(
    tenants: tuple[Tenant, Tenant], gateway: httpx.Client
) -> None:
    a, b = tenants

    theirs = gateway.get(f"/v1/uploads/{b.csv}", headers=a.reader)
    nobodys = gateway.get(f"/v1/uploads/{uuid.uuid4().hex}", headers=a.reader)

    assert theirs.status_code == 404
    _same_refusal(theirs, nobodys)
    assert gateway.get(f"/v1/uploads/{b.csv}", headers=b.reader).status_code == 200


def test_service_keys_stay_in_their_tenant(
    tenants: tuple[Tenant, Tenant],
    open_upload: str,
    gateway: httpx.Client,
    settings: Settings,
) -> None:
    a, _ = tenants
    issued = ServiceKeyStore.from_settings(settings).create(a.name, ["uploader"])
    key = bearer(issued.api_key)

    assert gateway.head(open_upload, headers={**TUS, **key}).status_code == 404
    assert patch_upload(gateway, key, open_upload, 0, b"x" * 10).status_code == 404


# --- The warehouse ------------------------------------------------------------


def test_warehouse_status_of_another_tenants_upload_is_404(
    tenants: tuple[Tenant, Tenant], warehouse_http: httpx.Client
) -> None:
    a, b = tenants

    theirs = warehouse_http.get(f"/v1/uploads/{b.csv}", headers=a.reader)
    nobodys = warehouse_http.get(f"/v1/uploads/{uuid.uuid4().hex}", headers=a.reader)

    assert theirs.status_code == 404
    _same_refusal(theirs, nobodys)
    assert warehouse_http.get(f"/v1/uploads/{b.csv}", headers=b.reader).is_success


@pytest.mark.parametrize("table", ["file_results", "file_stages", "uploads"])
def test_queries_see_only_the_callers_results_and_stages(
    tenants: tuple[Tenant, Tenant], warehouse_http: httpx.Client, table: str
) -> None:
    a, b = tenants
    final = "" if table == "uploads" else " FINAL"
    ids = f"'{b.csv}', '{b.eicar}', '{a.csv}'"

    rows = _query(
        warehouse_http,
        a.reader,
        f"SELECT DISTINCT tenant, upload_id FROM sluice.{table}{final} "
        f"WHERE upload_id IN ({ids})",
    )
    everything = _query(
        warehouse_http, a.reader, f"SELECT DISTINCT tenant FROM sluice.{table}{final}"
    )

    assert {r["upload_id"] for r in rows} == {a.csv}
    assert everything == [{"tenant": a.name}]


def test_another_tenants_dataset_is_refused_like_a_missing_one(
    tenants: tuple[Tenant, Tenant], warehouse_http: httpx.Client
) -> None:
    a, b = tenants

    def query(sql: str) -> httpx.Response:
        return warehouse_http.post("/v1/query", headers=a.reader, json={"sql": sql})

    theirs = query(f"SELECT * FROM datasets.{b.name}__sales")
    nobodys = query(f"SELECT * FROM datasets.{b.name}__nothing_here")
    hidden = query(
        f"SELECT * FROM datasets.{a.name}__sales WHERE amount IN "
        f"(SELECT amount FROM datasets.{b.name}__sales)"
    )

    assert theirs.status_code == 400
    assert theirs.json()["error"] == "table"
    # The refusal is in A's log, naming what was asked, not what exists.
    refusals = eventually(
        lambda: _query(
            warehouse_http,
            a.auditor,
            "SELECT detail['reason'] AS reason FROM sluice.audit_log FINAL "
            "WHERE target = 'query.table'",
        )
    )
    assert any(f"{b.name}__sales" in r["reason"] for r in refusals)
    assert theirs.text.replace("sales", "") == nobodys.text.replace("nothing_here", "")
    assert hidden.status_code == 400
    own = _query(warehouse_http, a.reader, f"SELECT * FROM datasets.{a.name}__sales")
    assert {r["region"] for r in own} == {"north", "south", a.name}
    theirs_own = _query(
        warehouse_http, b.reader, f"SELECT * FROM datasets.{b.name}__sales"
    )
    assert {r["region"] for r in theirs_own} == {"north", "south", b.name}


def test_auditors_see_only_their_tenants_audit_records(
    tenants: tuple[Tenant, Tenant],
    warehouse_http: httpx.Client,
    issue: Callable[..., str],
) -> None:
    a, b = tenants
    sql = "SELECT DISTINCT tenant, target FROM sluice.audit_log FINAL"

    mine = _query(warehouse_http, a.auditor, sql)
    theirs = _query(warehouse_http, b.auditor, sql)
    # An auditor of tenant A assigned B by the identity provider reads B.
    assigned = bearer(issue(a.name, "auditor", audit_tenants=[b.name]))

    assert {r["tenant"] for r in mine} == {a.name}
    assert {r["target"] for r in mine} >= {a.csv, a.eicar}
    assert {r["tenant"] for r in theirs} == {b.name}
    assert {r["tenant"] for r in _query(warehouse_http, assigned, sql)} == {b.name}
    # Readers read no audit at all, their own tenant's included.
    refused = warehouse_http.post(
        "/v1/query", headers=a.reader, json={"sql": "SELECT * FROM sluice.audit_log"}
    )
    assert refused.status_code == 403


# --- Storage ------------------------------------------------------------------


def test_storage_keys_are_the_tenants_own(
    tenants: tuple[Tenant, Tenant], store: ObjectStore
) -> None:
    for tenant in tenants:
        clean = tenant.results[tenant.csv]
        infected = tenant.results[tenant.eicar]
        assert clean["location"] == storage.content_key(tenant.name, clean["sha256"])
        assert infected["location"] == storage.quarantine_key(tenant.name, tenant.eicar)
        assert store.exists(clean["location"])
        assert store.exists(infected["location"])

    a, b = tenants
    # The same EICAR bytes are stored apart (and sealed), under each tenant.
    assert set(store.list_sizes(f"quarantine/{a.name}")) == {a.eicar}
    assert set(store.list_sizes(f"quarantine/{b.name}")) == {b.eicar}


# --- The command line ---------------------------------------------------------


def test_cli_status_and_query_reach_nothing_of_another_tenant(
    tenants: tuple[Tenant, Tenant],
) -> None:
    a, b = tenants

    status = run_sluice(a.token, "status", b.csv, "--json")
    query = run_sluice(a.token, "query", f"SELECT * FROM datasets.{b.name}__sales")
    results = run_sluice(
        a.token,
        "query",
        "SELECT count() AS n FROM sluice.file_results FINAL "
        f"WHERE upload_id = '{b.csv}'",
        "--format",
        "json",
    )

    assert status.returncode == 1
    assert "not found" in status.stderr
    assert b.name not in status.stdout
    assert query.returncode == 1
    assert results.returncode == 0
    assert json.loads(results.stdout)["n"] in (0, "0")


# --- Kafka events -------------------------------------------------------------


def _produce(
    settings: Settings, topic: str, key: bytes, value: bytes, headers: Any
) -> None:
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            # Java-compatible hashing, as the gateway and Faust partition.
            "partitioner": "murmur2_random",
        }
    )
    producer.produce(settings.topic(topic), key=key, value=value, headers=headers)
    assert producer.flush(30) == 0


def _dead_letter_of(
    settings: Settings, operator: dict[str, str], upload_id: str
) -> Any:
    response = httpx.get(
        f"{settings.gateway_url}/v1/ops/dead-letters", headers=operator, timeout=60
    )
    assert response.status_code == 200
    mine = [d for d in response.json()["dead_letters"] if d["upload_id"] == upload_id]
    return mine[0] if mine else None


def test_a_chunk_whose_header_names_another_tenant_is_dead_lettered(
    tenants: tuple[Tenant, Tenant],
    settings: Settings,
    store: ObjectStore,
    issue: Callable[..., str],
) -> None:
    a, b = tenants
    upload_id = uuid.uuid4().hex
    data = b"bytes claiming to be tenant A's, sent as tenant B\n"
    chunk = {
        "event_id": f"{upload_id}:0",
        "tenant": a.name,
        "upload_id": upload_id,
        "offset": 0,
        "length": len(data),
        "upload_length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "data": data,
        "filename": "forged.txt",
        "metadata": {},
        "produced_at": now_ms(),
    }
    headers = make_headers(correlation_id=upload_id, tenant=b.name, upload_id=upload_id)

    _produce(
        settings,
        topics.CHUNKS,
        upload_id.encode(),
        codec.encode("Chunk", chunk),
        headers,
    )

    operator = bearer(issue("ops", "operator"))
    letter = eventually(lambda: _dead_letter_of(settings, operator, upload_id))
    assert letter["category"] == "VALIDATION"
    assert letter["agent"] == "assemble"
    assert letter["attempts"] == 1
    assert "tenant" in letter["error"]
    assert "value" not in letter  # operators never see the bytes
    for name in (a.name, b.name):
        assert store.list_sizes(storage.staging_prefix(name, upload_id)) == {}


def test_a_mislabelled_stage_cannot_claim_a_tenants_content(
    tenants: tuple[Tenant, Tenant],
    settings: Settings,
    issue: Callable[..., str],
    tmp_path: Path,
) -> None:
    a, b = tenants
    content = f"content tenant A will upload later {uuid.uuid4()}\n".encode()
    sha256 = hashlib.sha256(content).hexdigest()
    forged_id = uuid.uuid4().hex
    stage = {
        "event_id": f"{forged_id}:TYPED",
        "upload_id": forged_id,
        "tenant": a.name,
        "stage": "TYPED",
        "filename": "x.txt",
        "metadata": {},
        "size": len(content),
        "sha256": sha256,
        "staging_key": storage.assembled_key(a.name, forged_id),
        "correlation_id": forged_id,
        "scan": {"status": "CLEAN", "signature": None, "engine": "forged"},
        "detected_mime": "text/plain",
        "findings": [],
        "duplicate_of": None,
        "occurred_at": now_ms(),
    }
    headers = make_headers(correlation_id=forged_id, tenant=b.name, upload_id=forged_id)
    _produce(
        settings,
        topics.TYPED,
        f"{a.name}:{sha256}".encode(),
        codec.encode("FileStage", stage),
        headers,
    )
    operator = bearer(issue("ops", "operator"))
    letter = eventually(lambda: _dead_letter_of(settings, operator, forged_id))
    assert (letter["agent"], letter["category"]) == ("dedupe", "VALIDATION")

    # A's real upload of those bytes is the first copy, not a duplicate.
    (tmp_path / "later.txt").write_bytes(content)
    [uploaded] = upload_files(
        [tmp_path / "later.txt"],
        gateway_url=settings.gateway_url,
        headers=a.reader,
        chunk_size=1 << 20,
        show_progress=False,
    )
    client = WarehouseClient(f"http://{settings.warehouse_listen}", a.reader)
    try:
        result = client.wait_for_results([uploaded["upload_id"]], timeout_s=60)
    finally:
        client.close()
    assert result[uploaded["upload_id"]]["duplicate_of"] is None
