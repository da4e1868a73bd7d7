"""Gateway pieces that need no stack: schema evolution, partitioner, chunking,
budgets, and the producer queue's bounds."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import time

import fastavro
import pytest
from confluent_kafka import Producer
from fastavro.schema import parse_schema

from ingest_gateway import memory, tus
from ingest_gateway.append import Pieces, batch_plan
from ingest_gateway.errors import Overloaded
from ingest_gateway.limits import Budget
from ingest_gateway.partitioner import murmur2, partition_for
from ingest_gateway.producer import chunk_record, cut_chunks, producer_config
from streams import codec
from streams.config import Settings
from streams.errors import InvalidRequest, KafkaUnavailable
from streams.events import make_headers
from streams.produce import CHUNK_RECORD_OVERHEAD, QUEUED_CHUNKS, send_bounded

SCHEMAS = codec.SCHEMA_DIR


def _parsed(path: str) -> dict[str, object]:
    raw = json.loads((SCHEMAS / path).read_text())
    parsed = parse_schema(raw, _write_hint=False)
    assert isinstance(parsed, dict)
    return parsed


def _v2_state(**overrides: object) -> dict[str, object]:
    state: dict[str, object] = {
        "upload_id": "u1",
        "tenant": "acme",
        "owner": "svc",
        "status": "RECEIVING",
        "offset": 5,
        "length": 10,
        "filename": "a.bin",
        "metadata": {"filename": "a.bin"},
        "correlation_id": "c1",
        "created_at": 1,
        "updated_at": 2,
        "expires_at": 3,
        "idempotency_key": None,
        "lease_holder": "gw-1/boot/req",
        "lease_expires_at": 4,
        "concat": "PARTIAL",
        "parts": [],
        "replay_from": 7,
        "source": "tus",
    }
    state.update(overrides)
    return state


def test_old_readers_read_new_upload_states() -> None:
    old = _parsed("retired/upload_state.v1.avsc")
    new = _parsed("upload_state.avsc")
    for status, read_as in (("RECEIVING", "RECEIVING"), ("EXPIRED", "CREATED")):
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, new, _v2_state(status=status))
        buffer.seek(0)

        record = fastavro.schemaless_reader(buffer, new, old)

        assert isinstance(record, dict)
        assert record["offset"] == 5
        # A status the old reader does not know reads as its enum default.
        assert record["status"] == read_as
        assert "lease_holder" not in record


def test_new_readers_read_old_upload_states() -> None:
    old = _parsed("retired/upload_state.v1.avsc")
    state = {
        k: v
        for k, v in _v2_state(status="COMPLETE").items()
        if k
        not in {
            "lease_holder",
            "lease_expires_at",
            "concat",
            "parts",
            "replay_from",
            "source",
        }
    }
    buffer = io.BytesIO()
    buffer.write(codec.MAGIC)
    buffer.write(codec._load(SCHEMAS / "retired/upload_state.v1.avsc").fingerprint)
    fastavro.schemaless_writer(buffer, old, state)

    record = codec.decode("UploadState", buffer.getvalue())

    assert record["status"] == "COMPLETE"
    assert record["concat"] == "NONE"
    assert record["lease_holder"] is None
    assert record["parts"] == []
    assert record["source"] == "tus"


def test_murmur2_matches_kafka() -> None:
    # Vectors from Kafka's own partitioner tests.
    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536
    assert partition_for(b"foobar", 4) == (-790332482 & 0x7FFFFFFF) % 4


def test_chunks_fall_on_fixed_boundaries_whatever_the_patch() -> None:
    state = {"upload_id": "u", "tenant": "t", "filename": "f", "metadata": {}}
    body = bytes(range(250)) * 10
    # The pieces a server hands over, cut anywhere: across chunk boundaries,
    # exactly on one, and empty.
    pieces = [body[:100], body[100:324], b"", body[324:2000], body[2000:]]
    chunks = list(
        cut_chunks(
            pieces,
            state=state,
            start_offset=700,
            chunk_bytes=1024,
            upload_length=4000,
        )
    )
    assert [(c["offset"], c["length"]) for c in chunks] == [
        (700, 324),
        (1024, 1024),
        (2048, 1024),
        (3072, 128),
    ]
    assert chunks[1]["event_id"] == "u:1024"
    cursor = 0
    for chunk in chunks:
        data = b"".join(chunk["data"])
        assert data == body[cursor : cursor + chunk["length"]]
        assert chunk["sha256"] == hashlib.sha256(data).hexdigest()
        # Encoded from its pieces, the event is the one the joined bytes make.
        joined = dict(chunk, data=data)
        assert codec.encode_spliced("Chunk", chunk, "data") == codec.encode(
            "Chunk", joined
        )
        cursor += chunk["length"]
    assert cursor == len(body)


@pytest.mark.parametrize("size", [0, 1, 63, 64, 8191, 8192, 2**20 + 3])
def test_a_spliced_encoding_is_the_plain_encoding(size: int) -> None:
    data = os.urandom(size)
    record = {
        "event_id": "u:5",
        "tenant": "t",
        "upload_id": "u",
        "offset": 5,
        "length": size,
        "upload_length": 2**40,
        "sha256": hashlib.sha256(data).hexdigest(),
        "data": data,
        "filename": "naïve.bin",
        "metadata": {"k": "v"},
        "source": "tus",
        "produced_at": 1_764_000_000_000,
    }
    third = size // 3
    split = [memoryview(data)[:third], data[third : 2 * third], data[2 * third :]]
    spliced = codec.encode_spliced("Chunk", dict(record, data=split), "data")
    assert spliced == codec.encode("Chunk", record)
    assert codec.decode("Chunk", spliced)["data"] == data


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("partial", ("partial", [])),
        ("final;/files/a1 /files/b2", ("final", ["a1", "b2"])),
        ("final;https://h/files/a1 http://h/x/files/b2", ("final", ["a1", "b2"])),
    ],
)
def test_upload_concat_parses(header: str, expected: object) -> None:
    assert tus.parse_concat(header) == expected


@pytest.mark.parametrize("header", ["final;", "final;/elsewhere/a", "whole", ""])
def test_bad_upload_concat_is_refused(header: str) -> None:
    with pytest.raises(InvalidRequest):
        tus.parse_concat(header)


MIB = 1024 * 1024


def test_budget_shares_start_small_grow_to_fair_and_never_exceed_the_budget() -> None:
    async def scenario() -> None:
        budget = Budget(12 * MIB, 10**12, smallest=1 * MIB, largest=6 * MIB, wait_s=2)
        first = budget.admit()
        # A slow start: the smallest share, then doubling per batch, up to
        # the fair part (alone: the largest share).
        assert [await first.resize() for _ in range(5)] == [
            1 * MIB,
            2 * MIB,
            4 * MIB,
            6 * MIB,
            6 * MIB,
        ]
        second = budget.admit()
        assert [await second.resize() for _ in range(4)] == [
            1 * MIB,
            2 * MIB,
            4 * MIB,
            6 * MIB,
        ]
        assert budget.inflight == budget.max_inflight
        third = budget.admit()
        # Nothing is free until the first two give back their excess at
        # their next batch: the third waits for that instead of a 503.
        waiting = asyncio.create_task(third.resize())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert await first.resize() == 4 * MIB
        assert await waiting == 1 * MIB
        assert await third.resize() == 2 * MIB  # grows into what is free
        assert await second.resize() == 4 * MIB
        assert await third.resize() == 4 * MIB
        assert budget.inflight == 12 * MIB
        for share in (first, second, third):
            await share.close()
        assert (budget.inflight, budget.holders) == (0, 0)

    asyncio.run(scenario())


def test_budget_refuses_a_body_when_even_the_smallest_share_cannot_fit() -> None:
    async def scenario() -> None:
        budget = Budget(3 * MIB, 10**12, smallest=1 * MIB, largest=3 * MIB)
        shares = [budget.admit() for _ in range(3)]
        with pytest.raises(Overloaded) as refused:
            budget.admit()
        assert refused.value.retry_after >= 1
        await shares[0].close()
        budget.admit()  # room again

    asyncio.run(scenario())


def test_budget_waits_only_so_long_for_a_share() -> None:
    async def scenario() -> None:
        budget = Budget(4 * MIB, 10**12, smallest=1 * MIB, largest=4 * MIB, wait_s=0.2)
        hog = budget.admit()
        for _ in range(3):
            await hog.resize()
        assert hog.size == 4 * MIB
        # The hog never reaches another batch (a stalled client): the
        # newcomer is refused after the wait, and holds nothing.
        late = budget.admit()
        with pytest.raises(Overloaded):
            await late.resize()
        await late.close()
        assert budget.inflight == 4 * MIB

    asyncio.run(scenario())


def test_a_process_over_its_memory_ceiling_refuses_bodies() -> None:
    budget = Budget(64 * MIB, 1, smallest=1 * MIB, largest=8 * MIB)
    with pytest.raises(Overloaded, match="memory"):
        budget.admit()
    assert budget.holders == 0


class RecordingLibc:
    """Stands in for glibc so the test sees which calls the keeper makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def mallopt(self, *args: int) -> int:
        self.calls.append(("mallopt", args))
        return 1

    def malloc_trim(self, *args: int) -> int:
        self.calls.append(("malloc_trim", args))
        return 1


def test_the_memory_keeper_caps_arenas_and_trims_only_above_idle_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    libc = RecordingLibc()
    monkeypatch.setattr(memory, "_libc", lambda: libc)
    monkeypatch.setattr(memory, "TRIM_EVERY_S", 0.01)
    monkeypatch.setattr(memory, "TRIM_ABOVE_BYTES", 2**62)
    keeper = memory.MemoryKeeper()
    keeper.start()
    time.sleep(0.1)
    assert libc.calls == [("mallopt", (memory.M_ARENA_MAX, memory.ARENAS))]
    monkeypatch.setattr(memory, "TRIM_ABOVE_BYTES", 0)
    time.sleep(0.1)
    keeper.stop()
    assert ("malloc_trim", (0,)) in libc.calls
    assert memory._libc() is not None  # glibc here: the real one is found


def test_batches_pipeline_only_when_the_share_holds_three_full_ones() -> None:
    chunk, full = 512 * 1024, 8 * MIB
    # Alone (the largest share): three full batches, read while one commits.
    assert batch_plan(24 * MIB, chunk, full) == (8 * MIB, True)
    # Short of that: stop-and-wait, two batches in the share, never over full.
    assert batch_plan(20 * MIB, chunk, full) == (8 * MIB, False)
    # 32 bodies in 128 MiB: 2 MiB transactions rather than 1 MiB.
    assert batch_plan(4 * MIB, chunk, full) == (2 * MIB, False)
    # Whole chunks, and at least one, however small the share.
    assert batch_plan(3 * chunk, chunk, full) == (chunk, False)
    assert batch_plan(chunk // 2, chunk, full) == (chunk, False)
    for share in range(chunk, 30 * MIB, 333_333):
        batch, pipelined = batch_plan(share, chunk, full)
        assert batch % chunk == 0 and chunk <= batch <= full
        # What the body holds (batches in memory) fits in its share.
        held = batch * (3 if pipelined else 2)
        assert held <= share or batch == chunk


def test_tiny_body_pieces_are_coalesced_and_large_ones_kept_as_they_are() -> None:
    body = os.urandom(3 * 256 * 1024)
    batch = Pieces()
    # A client's 1-byte frames, then the large pieces a fast client makes.
    for byte in range(100_000):
        batch.add(body[byte : byte + 1])
    for start in range(100_000, len(body), 64 * 1024):
        batch.add(body[start : start + 64 * 1024])
    pieces, size = batch.take()
    assert size == len(body)
    assert b"".join(pieces) == body
    # 100 000 one-byte pieces take one buffer, not 100 000 objects.
    assert len(pieces) <= 2 + len(body) // (64 * 1024)
    assert batch.take() == ([], 0)
    state = {"upload_id": "u", "tenant": "t", "filename": "f", "metadata": {}}
    chunks = list(
        cut_chunks(
            pieces, state=state, start_offset=0, chunk_bytes=1 << 19, upload_length=size
        )
    )
    assert b"".join(b"".join(c["data"]) for c in chunks) == body


def test_a_share_owes_its_excess_only_while_someone_waits() -> None:
    async def scenario() -> None:
        budget = Budget(4 * MIB, 10**12, smallest=1 * MIB, largest=4 * MIB, wait_s=2)
        early = budget.admit()
        for _ in range(3):
            await early.resize()
        assert early.size == 4 * MIB
        assert not early.owes()
        late = budget.admit()
        assert not early.owes()  # fair is 2 MiB, but nobody waits yet
        waiting = asyncio.create_task(late.resize())
        await asyncio.sleep(0.05)
        assert early.owes()
        assert await early.resize() == 2 * MIB
        assert await waiting == 1 * MIB
        assert not early.owes()

    asyncio.run(scenario())


# librdkafka's window (produce requests in flight on one connection), and
# what one request carries of a partition's records (batch.size; always at
# least one record).
LIBRDKAFKA_MAX_IN_FLIGHT = 5
LIBRDKAFKA_BATCH_BYTES = 1_000_000


def _largest_chunk_record(chunk_bytes: int) -> int:
    """Bytes of the largest record a chunk of this size makes: a 255-byte
    name and metadata as large as the tus header allows."""
    name = "n" * 251 + ".bin"
    metadata = {f"k{i}": "v" * 100 for i in range(60)}
    state = {"upload_id": "u" * 36, "tenant": "t" * 63, "filename": name}
    state["metadata"] = {"filename": name, **metadata}
    record = chunk_record(state, 0, os.urandom(chunk_bytes), 10**12)
    value = codec.encode_spliced("Chunk", record, "data")
    headers = make_headers(correlation_id="c" * 36, tenant="t" * 63, upload_id="u" * 36)
    return len(value) + 36 + sum(len(k) + len(v or b"") for k, v in headers)


@pytest.mark.parametrize(
    "chunk_bytes", [1024, 64 * 1024, 256 * 1024, 512 * 1024, 900 * 1024]
)
def test_a_writer_queues_only_the_chunk_records_librdkafka_can_have_in_flight(
    chunk_bytes: int,
) -> None:
    largest = _largest_chunk_record(chunk_bytes)
    assert largest <= chunk_bytes + CHUNK_RECORD_OVERHEAD
    config = producer_config(Settings(chunk_bytes=chunk_bytes), "t")
    queue_bytes = config["queue.buffering.max.kbytes"] * 1024

    # Four of the largest records fit, and so does any record a writer may
    # send (a concatenation copies parts cut under another chunk size).
    assert queue_bytes >= QUEUED_CHUNKS * largest
    assert queue_bytes >= config["message.max.bytes"] >= largest

    # A full queue of the smallest full chunks needs no more requests than
    # the window has, less one for the state record: more would make
    # librdkafka spin on records it cannot send.
    record = chunk_bytes + 200
    per_request = max(1, LIBRDKAFKA_BATCH_BYTES // record)
    requests = -(-(queue_bytes // record) // per_request)
    assert requests <= QUEUED_CHUNKS < LIBRDKAFKA_MAX_IN_FLIGHT


def test_a_record_that_finds_no_room_in_the_queue_gives_up_in_time() -> None:
    # A real librdkafka producer whose broker never answers (nothing
    # listens on port 9 here): its queue fills and nothing is delivered.
    producer = Producer(
        {
            "bootstrap.servers": "127.0.0.1:9",
            "queue.buffering.max.kbytes": 4,
            "message.timeout.ms": 60_000,
        }
    )
    record = os.urandom(3 * 1024)
    send_bounded(producer, "t", b"k", record, [], timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match="no delivery to t"):
        send_bounded(producer, "t", b"k", record, [], timeout_s=0.3)
    assert 0.3 <= time.monotonic() - started < 5
    producer.purge()
