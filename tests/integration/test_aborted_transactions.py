"""Chunks of an aborted transaction never reach the agents (read_committed)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable

from confluent_kafka import Producer

from streams import codec, storage, topics
from streams.client import WarehouseClient
from streams.config import Settings
from streams.storage import ObjectStore


def test_an_aborted_upload_is_never_processed(
    settings: Settings,
    upload: Callable[[dict[str, bytes]], dict[str, str]],
    warehouse: WarehouseClient,
    store: ObjectStore,
    tenant: str,
) -> None:
    aborted_id = uuid.uuid4().hex
    data = b"bytes a killed gateway never acknowledged\n"
    chunk = {
        "event_id": f"{aborted_id}:0",
        "tenant": tenant,
        "upload_id": aborted_id,
        "offset": 0,
        "length": len(data),
        "upload_length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "data": data,
        "filename": "never.txt",
        "metadata": {},
        "source": "tus",
        "produced_at": 0,
    }
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "transactional.id": f"test-aborted-{aborted_id}",
            "partitioner": "murmur2_random",
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(
        settings.topic(topics.CHUNKS),
        key=aborted_id.encode(),
        value=codec.encode("Chunk", chunk),
        headers=[("tenant", tenant.encode()), ("upload-id", aborted_id.encode())],
    )
    producer.flush(10)
    producer.abort_transaction(30)

    # A committed upload on the same partition, after the aborted one.
    committed = upload({"kept.txt": data})["kept.txt"]
    results = warehouse.wait_for_results([committed], timeout_s=60)

    assert results[committed]["verdict"] == "CLEAN"
    assert warehouse.results([aborted_id]) == {}
    assert not store.exists(storage.routed_key(tenant, aborted_id))
    assert store.list_sizes(f"staging/{tenant}") == {}
