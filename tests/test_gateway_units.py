"""Gateway pieces that need no stack: schema evolution, partitioner, chunking."""

from __future__ import annotations

import io
import json

import fastavro
import pytest
from fastavro.schema import parse_schema

from ingest_gateway import tus
from ingest_gateway.partitioner import murmur2, partition_for
from ingest_gateway.producer import cut_chunks
from streams import codec
from streams.errors import InvalidRequest

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
    pieces = list(
        cut_chunks(
            b"x" * 2500,
            state=state,
            start_offset=700,
            chunk_bytes=1024,
            upload_length=4000,
        )
    )
    assert [(c["offset"], c["length"]) for c in pieces] == [
        (700, 324),
        (1024, 1024),
        (2048, 1024),
        (3072, 128),
    ]
    assert pieces[1]["event_id"] == "u:1024"


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
