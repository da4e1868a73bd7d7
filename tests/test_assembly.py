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
from streams import storage
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


def test_a_chunk_that_rewrites_stored_bytes_is_refused(objects: ObjectStore) -> None:
    if not objects.in_place:
        pytest.skip("parts on an object store are checked at the final chunk")
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
