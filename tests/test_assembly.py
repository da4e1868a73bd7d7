"""Assembly on local storage (in place) and on an object store (parts).

The object store here is fsspec's in-memory filesystem: it cannot write at
an offset, as S3 or MinIO cannot, so it takes the parts path they take.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import agents.assemble as assemble
import agents.deps as deps
from streams import codec, storage
from streams.errors import IntegrityError
from streams.storage import ObjectStore

TENANT = "acme"
CHUNK = 64 * 1024


def chunks_of(upload_id: str, data: bytes) -> list[dict[str, Any]]:
    out = []
    for offset in range(0, len(data), CHUNK):
        piece = data[offset : offset + CHUNK]
        out.append(
            {
                "tenant": TENANT,
                "upload_id": upload_id,
                "offset": offset,
                "length": len(piece),
                "upload_length": len(data),
                "data": piece,
                "sha256": hashlib.sha256(piece).hexdigest(),
                "filename": "data.bin",
                "metadata": {},
                "event_id": f"{upload_id}:{offset}",
                "produced_at": 0,
            }
        )
    return out


@pytest.fixture(params=["local", "object-store"])
def objects(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ObjectStore]:
    if request.param == "local":
        store = ObjectStore(f"file://{tmp_path}")
    else:
        store = ObjectStore(f"memory://assembly-{tmp_path.name}")
    assert store.in_place is (request.param == "local")
    monkeypatch.setattr(assemble, "store", lambda: store)
    monkeypatch.setattr(deps, "store", lambda: store)
    monkeypatch.setattr(assemble, "RUNNING", assemble.RunningDigests())
    yield store


def assembled_of(outputs: list[Any]) -> dict[str, Any]:
    [output] = outputs
    assert output.schema == "FileStage"
    return dict(output.record)


def test_chunks_in_order_make_the_file(
    objects: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    if objects.in_place:
        # In place, the digest advances with the chunks: no second read.
        def reread(key: str) -> None:
            raise AssertionError(f"{key} was read back to hash it")

        monkeypatch.setattr(objects, "digest", reread)
    data = random.Random(1).randbytes(5 * CHUNK + 123)
    outputs: list[Any] = []
    for chunk in chunks_of("u1", data):
        outputs = assemble.handle(chunk, {})
    record = assembled_of(outputs)
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["size"] == len(data)
    assert objects.read_head(record["staging_key"], len(data) + 1) == data
    assert objects.list_sizes(storage.parts_prefix(TENANT, "u1")) == {}
    assert not objects.exists(storage.assembling_key(TENANT, "u1"))


def test_out_of_order_and_replayed_chunks(objects: ObjectStore) -> None:
    data = random.Random(2).randbytes(6 * CHUNK)
    chunks = chunks_of("u2", data)
    # 0, 2, 1 (a gap filled late), 1 and 0 again (replays), then the rest.
    order = [0, 2, 1, 1, 0, 3, 4, 2, 5]
    outputs: list[Any] = []
    for index in order:
        outputs = assemble.handle(chunks[index], {})
    record = assembled_of(outputs)
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert objects.read_head(record["staging_key"], len(data) + 1) == data


def test_a_restart_mid_upload_hashes_the_file_from_storage(
    objects: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random.Random(3).randbytes(4 * CHUNK + 7)
    chunks = chunks_of("u3", data)
    for chunk in chunks[:2]:
        assert assemble.handle(chunk, {}) == []
    monkeypatch.setattr(assemble, "RUNNING", assemble.RunningDigests())
    outputs: list[Any] = []
    for chunk in chunks[2:]:
        outputs = assemble.handle(chunk, {})
    assert assembled_of(outputs)["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_missing_chunk_is_a_gap_not_a_file(objects: ObjectStore) -> None:
    data = random.Random(4).randbytes(3 * CHUNK)
    first, _, last = chunks_of("u4", data)
    assemble.handle(first, {})
    with pytest.raises(IntegrityError, match="gaps or overlaps"):
        assemble.handle(last, {})
    assert not objects.exists(storage.assembled_key(TENANT, "u4"))


# In place only: the object-store path has its conflicts tested above.
@pytest.mark.parametrize("objects", ["local"], indirect=True)
def test_a_chunk_that_rewrites_stored_bytes_is_refused(objects: ObjectStore) -> None:
    data = random.Random(5).randbytes(3 * CHUNK)
    first, second, _ = chunks_of("u5", data)
    assemble.handle(first, {})
    assemble.handle(second, {})
    forged = dict(second, data=bytes(len(second["data"])))
    forged["sha256"] = hashlib.sha256(forged["data"]).hexdigest()
    with pytest.raises(IntegrityError, match="differs from the bytes stored"):
        assemble.handle(forged, {})
    path = objects.local_path(storage.assembling_key(TENANT, "u5"))
    assert path is not None
    assert Path(path).read_bytes() == data[: 2 * CHUNK]


def test_a_running_digest_never_outlives_its_file(objects: ObjectStore) -> None:
    # Half of one content, staging removed (an expiry sweep), then the same
    # id with other content: the digest must be of what is stored.
    first = random.Random(6).randbytes(4 * CHUNK)
    for chunk in chunks_of("u6", first)[:2]:
        assemble.handle(chunk, {})
    objects.delete_prefix(storage.staging_prefix(TENANT, "u6"))
    second = random.Random(7).randbytes(4 * CHUNK)
    outputs: list[Any] = []
    for chunk in chunks_of("u6", second):
        outputs = assemble.handle(chunk, {})
    record = assembled_of(outputs)
    assert record["sha256"] == hashlib.sha256(second).hexdigest()
    assert objects.digest(record["staging_key"]).sha256 == record["sha256"]


@pytest.mark.parametrize("order", [[0, 1, "1*", 2, 3], [0, 2, "2*", 1, 3]])
def test_conflicting_chunks_refuse_the_upload(
    objects: ObjectStore, order: list[int | str]
) -> None:
    """A second, different copy of a range: the copy and the upload refused.

    The second order holds chunk 2 as a part (ahead of the file) when its
    other copy arrives.
    """
    data = random.Random(8).randbytes(4 * CHUNK)
    chunks = chunks_of("u7", data)
    for step in order:
        if isinstance(step, str):
            original = chunks[int(step[0])]
            forged = dict(original, data=bytes(reversed(original["data"])))
            forged["sha256"] = hashlib.sha256(forged["data"]).hexdigest()
            with pytest.raises(IntegrityError, match="differs from the bytes stored"):
                assemble.handle(forged, {})
            continue
        if chunks[step]["offset"] + CHUNK < len(data):
            assert assemble.handle(chunks[step], {}) == []
        else:
            with pytest.raises(IntegrityError, match="upload refused"):
                assemble.handle(chunks[step], {})
    assert not objects.exists(storage.assembled_key(TENANT, "u7"))


def test_a_late_conflicting_chunk_is_refused(objects: ObjectStore) -> None:
    data = random.Random(9).randbytes(3 * CHUNK)
    chunks = chunks_of("u8", data)
    for chunk in chunks:
        outputs = assemble.handle(chunk, {})
    assembled_of(outputs)
    assert assemble.handle(chunks[1], {}) == []  # a replay restates nothing
    forged = dict(chunks[1], data=bytes(CHUNK))
    forged["sha256"] = hashlib.sha256(forged["data"]).hexdigest()
    with pytest.raises(IntegrityError, match="differs from the assembled file"):
        assemble.handle(forged, {})


class _Message:
    """A chunk event as confluent-kafka hands it back to repair."""

    def __init__(self, record: dict[str, Any], tenant_header: str) -> None:
        self._value = codec.encode("Chunk", record)
        self._headers = [("tenant", tenant_header.encode())]

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers


def test_repair_takes_only_chunks_the_agent_would_take() -> None:
    data = random.Random(10).randbytes(3 * CHUNK)
    first, middle, final = chunks_of("u9", data)
    assert assemble._repairable(_Message(middle, TENANT), final) == dict(
        middle, source="tus"
    )
    other_tenant = dict(middle, tenant="globex")
    assert assemble._repairable(_Message(other_tenant, "globex"), final) is None
    assert assemble._repairable(_Message(middle, "globex"), final) is None
    resized = dict(middle, upload_length=len(data) + 1)
    assert assemble._repairable(_Message(resized, TENANT), final) is None
    outside = dict(middle, offset=len(data))
    assert assemble._repairable(_Message(outside, TENANT), final) is None
    corrupt = dict(middle, sha256=first["sha256"])
    assert assemble._repairable(_Message(corrupt, TENANT), final) is None
