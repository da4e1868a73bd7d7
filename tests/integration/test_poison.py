"""Poison never blocks a partition: it is dead-lettered with its category,
shown to operators, and the uploads behind it on the same partition flow."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from confluent_kafka import Producer

from streams import codec, topics
from streams.client import WarehouseClient
from streams.config import Settings

from .conftest import TUS, create_upload, eventually, patch_upload, sluice
from .gateways import GatewayProcess


def test_poison_chunks_are_dead_lettered_and_do_not_block(
    settings: Settings,
    upload: Callable[[dict[str, bytes]], dict[str, str]],
    warehouse: WarehouseClient,
    tenant: str,
    issue: Callable[..., str],
) -> None:
    # Operators see dead letters through the gateway, with their own token.
    operator = issue(tenant, "operator")
    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap, "partitioner": "murmur2_random"}
    )
    chunks = settings.topic(topics.CHUNKS)
    headers = [("tenant", tenant.encode()), ("upload-id", b"poison1")]
    # Not Avro at all, on every partition.
    for partition in range(settings.topic_partitions):
        producer.produce(
            chunks,
            key=b"poison0",
            value=b"\x00not avro",
            partition=partition,
            headers=[("tenant", tenant.encode()), ("upload-id", b"poison0")],
        )
    # Valid Avro whose bytes do not match their checksum.
    data = b"tampered"
    chunk = {
        "event_id": "poison1:0",
        "tenant": tenant,
        "upload_id": "poison1",
        "offset": 0,
        "length": len(data),
        "upload_length": len(data),
        "sha256": hashlib.sha256(b"original").hexdigest(),
        "data": data,
        "filename": "x.bin",
        "metadata": {},
        "source": "direct",
        "produced_at": 0,
    }
    producer.produce(
        chunks, key=b"poison1", value=codec.encode("Chunk", chunk), headers=headers
    )
    assert producer.flush(10) == 0

    # Uploads after the poison, on every partition, still finish.
    files = {f"after-{i}.txt": f"{tenant} line {i}\n".encode() for i in range(8)}
    uploads = upload(files)
    results = warehouse.wait_for_results(list(uploads.values()), timeout_s=60)
    assert {r["verdict"] for r in results.values()} == {"CLEAN"}
    assert len(results) == len(files)

    def letters() -> list[dict[str, object]]:
        listed = json.loads(sluice("dlq", "list", "--json", token=operator))
        mine = [d for d in listed if d["tenant"] == tenant]
        return mine if len(mine) == settings.topic_partitions + 1 else []

    found = eventually(letters, timeout_s=60)
    categories = sorted(str(d["category"]) for d in found)
    assert categories == ["DECODE"] * settings.topic_partitions + ["VALIDATION"]
    assert {d["agent"] for d in found} == {"assemble"}

    [bad_checksum] = [d for d in found if d["category"] == "VALIDATION"]
    [shown] = json.loads(
        sluice("dlq", "show", str(bad_checksum["event_id"]), token=operator)
    )
    assert "checksum" in shown["error"]
    assert shown["message"]["upload_id"] == "poison1"
    assert shown["message"]["data"] == f"<{len(data)} bytes>"
    assert shown["headers"]["tenant"] == tenant


def test_a_poison_upload_state_record_does_not_stop_a_gateway(
    settings: Settings, auth: dict[str, str]
) -> None:
    """upload-state is read by every gateway from its start: a record no
    gateway wrote is logged and skipped, and states after it still count."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    state_topic = settings.topic(topics.UPLOAD_STATE)
    for partition in range(settings.topic_partitions):
        # Keyed: the topic is compacted, and a keyless record is refused.
        producer.produce(
            state_topic, key=b"poison-state", value=b"\x00not avro", partition=partition
        )
    assert producer.flush(10) == 0

    data = b"written after the poison\n"
    fresh = GatewayProcess(6, "gw-after-poison").start()
    try:
        with fresh.client() as client:
            created = create_upload(client, auth, len(data))
            assert created.status_code == 201, created.text
            location = created.headers["Location"]
            assert patch_upload(client, auth, location, 0, data).status_code == 204
        # Started again, it reads the whole topic, poison and all, and still
        # knows the upload's offset.
        fresh.stop()
        fresh.start()
        with fresh.client() as client:
            head = client.head(location, headers={**TUS, **auth})
            assert head.status_code == 200
            assert head.headers["Upload-Offset"] == str(len(data))
        log_text = fresh.log_path.read_text()
        assert "upload_state.undecodable" in log_text
    finally:
        fresh.stop()
