"""Fixtures for tests against the real local stack (ops/scripts/stack.sh).

``make test`` starts Kafka, clamd, the warehouse, the worker and the gateway
under their own SLUICE_HOME and ports, and sets SLUICE_REQUIRE_STACK so a
missing stack fails the run instead of skipping it. Run alone, against a
stack from ``make up``, these tests skip when it is not answering.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streams import codec, topics
from streams.auth import DevKeys
from streams.client import WarehouseClient, upload_files
from streams.config import Settings, get_settings
from streams.errors import DecodeError
from streams.events import make_headers
from streams.storage import ObjectStore

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "ops" / "scripts"
TUS = {"Tus-Resumable": "1.0.0"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session", autouse=True)
def stack(settings: Settings) -> None:
    """The running stack, or a skip (a failure under make test)."""
    probes = [
        f"{settings.gateway_url}/healthz",
        f"http://{settings.warehouse_listen}/healthz",
    ]
    if all(_answers(url) for url in probes):
        return
    message = "the local stack is not answering (make up, or run make test)"
    if os.environ.get("SLUICE_REQUIRE_STACK"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def tenant() -> str:
    """A tenant of its own for each test, so tests never see each other."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def issue(settings: Settings) -> Callable[..., str]:
    """issue(tenant, *roles, audit_tenants=None, subject=None) -> a dev token."""
    keys = DevKeys.load_or_create(settings.keys_dir)

    def _issue(
        tenant: str,
        *roles: str,
        audit_tenants: list[str] | None = None,
        subject: str | None = None,
    ) -> str:
        return keys.issue(
            tenant,
            list(roles or ("uploader", "reader")),
            subject=subject or f"test-{tenant}",
            ttl_s=3600,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            audit_tenants=audit_tenants,
        )

    return _issue


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def run_sluice(token: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``sluice`` command line as a user would; exit code unchecked."""
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_TOKEN"}
    if token is not None:
        env["SLUICE_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def auth(tenant: str, issue: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue(tenant)}"}


@pytest.fixture
def gateway(settings: Settings) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=settings.gateway_url, timeout=30) as client:
        yield client


@pytest.fixture
def warehouse(settings: Settings, auth: dict[str, str]) -> Iterator[WarehouseClient]:
    client = WarehouseClient(f"http://{settings.warehouse_listen}", auth)
    yield client
    client.close()


@pytest.fixture(scope="session")
def store(settings: Settings) -> ObjectStore:
    return ObjectStore(settings.storage_root)


def metadata_header(**values: str) -> str:
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}"
        for key, value in values.items()
    )


def create_upload(
    gateway: httpx.Client,
    auth: dict[str, str],
    length: int,
    filename: str = "data.bin",
    **extra: str,
) -> httpx.Response:
    """POST /files as a tus client would."""
    headers = {
        **TUS,
        **auth,
        "Upload-Length": str(length),
        "Upload-Metadata": metadata_header(filename=filename),
        **extra,
    }
    return gateway.post("/files", headers=headers)


def patch_upload(
    gateway: httpx.Client,
    auth: dict[str, str],
    location: str,
    offset: int,
    data: bytes | Iterator[bytes],
    checksum: str | None = None,
) -> httpx.Response:
    headers = {
        **TUS,
        **auth,
        "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream",
    }
    if checksum is not None:
        headers["Upload-Checksum"] = checksum
    return gateway.patch(location, headers=headers, content=data)


def patch_in_background(
    url: str,
    auth: dict[str, str],
    offset: int,
    body: Iterator[bytes],
    **headers: str,
) -> tuple[threading.Thread, list[Any]]:
    """PATCH body to url on a thread; its response (or HTTP error) lands in the list."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            with httpx.Client(timeout=120, verify=False) as client:  # noqa: S501
                outcome.append(
                    client.patch(
                        url,
                        headers={
                            **TUS,
                            **auth,
                            "Content-Type": "application/offset+octet-stream",
                            "Upload-Offset": str(offset),
                            **headers,
                        },
                        content=body,
                    )
                )
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def sha256_checksum(data: bytes) -> str:
    return "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.fixture
def upload(
    settings: Settings, auth: dict[str, str], tmp_path: Path
) -> Callable[[dict[str, bytes]], dict[str, str]]:
    """upload({name: bytes}) -> {name: upload id}, through the tus client."""

    def _upload(files: dict[str, bytes]) -> dict[str, str]:
        folder = tmp_path / uuid.uuid4().hex
        folder.mkdir()
        paths = []
        for name, data in files.items():
            path = folder / name
            path.write_bytes(data)
            paths.append(path)
        uploaded = upload_files(
            paths,
            gateway_url=settings.gateway_url,
            headers=auth,
            chunk_size=1024 * 1024,
            show_progress=False,
        )
        assert all(u["upload_id"] for u in uploaded), uploaded
        return {Path(u["path"]).name: u["upload_id"] for u in uploaded}

    return _upload


def topic_end_offsets(settings: Settings, short_name: str) -> dict[int, int]:
    """High watermark of every partition of a platform topic."""
    topic = settings.topic(short_name)
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": "test-offsets"}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
    finally:
        consumer.close()


def read_topic(settings: Settings, short_name: str, schema: str) -> list[Any]:
    """Every committed record of a platform topic, decoded, in offset order."""
    topic = settings.topic(short_name)
    ends = {p: e for p, e in topic_end_offsets(settings, short_name).items() if e}
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    records = []
    try:
        consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p, end in ends.items()]
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            positions = consumer.position([TopicPartition(topic, p) for p in ends])
            if all(tp.offset >= ends[tp.partition] for tp in positions):
                break
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            try:
                records.append(codec.decode(schema, message.value()))
            except DecodeError:
                continue  # poison other tests sent on purpose (test_poison)
    finally:
        consumer.close()
    return records


def stack_script(*args: str) -> None:
    """Run one of the stack scripts with the test stack's environment."""
    subprocess.run([str(SCRIPTS / args[0]), *args[1:]], check=True, timeout=180)


def eventually(
    probe: Callable[[], Any], *, timeout_s: float = 60, every_s: float = 0.5
) -> Any:
    """Poll probe() until it returns something truthy; fail at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s}s: {probe}")
        time.sleep(every_s)


def sluice(*args: str, token: str | None = None) -> str:
    """Run the ``sluice`` command line as an operator would; its stdout."""
    env = dict(os.environ)
    if token is not None:
        env["SLUICE_TOKEN"] = token
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return done.stdout


ROLES = ("uploader", "reader", "auditor", "operator", "admin")


@dataclass(frozen=True)
class AccessWorld:
    """One tenant with a finished CSV upload and quarantined files, and a
    single-role token per role: what the access tests act on."""

    tenant: str
    tokens: dict[str, str]
    upload_id: str  # data.csv: CLEAN, loaded as datasets.<tenant>__data
    quarantined: tuple[str, ...]  # EICAR uploads, INFECTED, in quarantine
    location: str  # the tus URL of upload_id
    dead_letter: str  # event id of a dead letter under this tenant

    def auth(self, role: str) -> dict[str, str]:
        return bearer(self.tokens[role])


@pytest.fixture(scope="session")
def access_world(
    settings: Settings,
    issue: Callable[..., str],
    tmp_path_factory: pytest.TempPathFactory,
) -> AccessWorld:
    from ops.demo.corpus import EICAR

    tenant = f"acc{uuid.uuid4().hex[:10]}"
    tokens = {role: issue(tenant, role) for role in ROLES}
    folder = tmp_path_factory.mktemp("access-world")
    files = {"data.csv": b"a,b\n1,2\n3,4\n"}
    files |= {f"eicar-{n}.com": EICAR for n in range(4)}
    paths = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    uploaded = upload_files(
        paths,
        gateway_url=settings.gateway_url,
        headers=bearer(tokens["uploader"]),
        chunk_size=1 << 20,
        show_progress=False,
    )
    ids = {Path(u["path"]).name: u["upload_id"] for u in uploaded}
    assert all(ids.values()), uploaded

    reader = WarehouseClient(
        f"http://{settings.warehouse_listen}", bearer(tokens["reader"])
    )
    try:
        results = reader.wait_for_results(list(ids.values()), timeout_s=120)
    finally:
        reader.close()
    assert len(results) == len(ids), results
    assert results[ids["data.csv"]]["dataset"] == "data"
    quarantined = tuple(ids[f"eicar-{n}.com"] for n in range(4))
    assert {results[u]["verdict"] for u in quarantined} == {"INFECTED"}

    return AccessWorld(
        tenant=tenant,
        tokens=tokens,
        upload_id=ids["data.csv"],
        quarantined=quarantined,
        location=f"{settings.gateway_url}/files/{ids['data.csv']}",
        dead_letter=_dead_letter(settings, tenant, tokens["operator"]),
    )


def _dead_letter(settings: Settings, tenant: str, operator: str) -> str:
    """Send a chunk the pipeline must refuse; return its dead letter's id."""
    upload_id = uuid.uuid4().hex
    data = b"refused"
    chunk = {
        "event_id": f"{upload_id}:0",
        "tenant": f"{tenant}-other",  # disagrees with the header below
        "upload_id": upload_id,
        "offset": 0,
        "length": len(data),
        "upload_length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "data": data,
        "filename": "refused.txt",
        "metadata": {},
        "produced_at": 0,
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

    def letter() -> str | None:
        listed = httpx.get(
            f"{settings.gateway_url}/v1/ops/dead-letters",
            headers=bearer(operator),
            timeout=60,
        ).json()["dead_letters"]
        found = [d["event_id"] for d in listed if d["upload_id"] == upload_id]
        return found[0] if found else None

    event_id: str = eventually(letter, timeout_s=60)
    return event_id


def chunks_of(
    settings: Settings, upload_id: str, short_name: str = "chunks"
) -> list[dict[str, Any]]:
    """Every committed chunk of one upload, in log order (its partition only)."""
    from ingest_gateway.partitioner import partition_for

    topic = settings.topic(short_name)
    ends = topic_end_offsets(settings, short_name)
    partition = partition_for(upload_id.encode(), len(ends))
    end = ends[partition]
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    found = []
    try:
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            (position,) = consumer.position([TopicPartition(topic, partition)])
            if position.offset >= end:
                break
            for message in consumer.consume(500, 0.5):
                if message.error() is None and message.key() == upload_id.encode():
                    found.append(codec.decode("Chunk", message.value()))
    finally:
        consumer.close()
    return found


def assert_tiles(chunks: list[dict[str, Any]], length: int) -> bytes:
    """The chunks cover [0, length) with neither gap nor overlap; their bytes."""
    expected = 0
    for chunk in sorted(chunks, key=lambda c: c["offset"]):
        assert chunk["offset"] == expected, (chunk["offset"], expected)
        assert len(chunk["data"]) == chunk["length"]
        expected += chunk["length"]
    assert expected == length
    return b"".join(c["data"] for c in sorted(chunks, key=lambda c: c["offset"]))


@pytest.fixture
def result_of(
    warehouse: WarehouseClient,
) -> Callable[..., dict[str, Any]]:
    """result_of(upload_id) -> the upload's terminal result, waiting for it."""

    def _result(upload_id: str, timeout_s: float = 120) -> dict[str, Any]:
        results = warehouse.wait_for_results([upload_id], timeout_s=timeout_s)
        assert upload_id in results, f"no result for {upload_id}"
        return results[upload_id]

    return _result


def stored_bytes(store: ObjectStore, result: dict[str, Any]) -> bytes:
    """The bytes the platform kept for a routed upload (quarantine unsealed)."""
    location = result["location"]
    if location.startswith("quarantine/"):
        from streams import quarantine

        key = quarantine.load_key(get_settings())
        return b"".join(quarantine.read(store, location, key))
    return b"".join(store.read_blocks(location))
