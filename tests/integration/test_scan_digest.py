"""The scan step checks that the bytes clamd judged are the bytes assembly hashed.

It runs the step in this process against the stack's clamd, on staged files
written here under a temporary storage root.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

import agents.deps as deps
import agents.scan as scan
from streams import storage
from streams.errors import IntegrityError
from streams.storage import ObjectStore


def stage_of(objects: ObjectStore, content: bytes, recorded: bytes) -> dict[str, Any]:
    key = storage.assembled_key("acme", "u1")
    objects.put(key, content)
    return {
        "upload_id": "u1",
        "tenant": "acme",
        "size": len(content),
        "sha256": hashlib.sha256(recorded).hexdigest(),
        "staging_key": key,
    }


@pytest.fixture
def objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    local = ObjectStore(f"file://{tmp_path}")
    monkeypatch.setattr(scan, "store", lambda: local)
    monkeypatch.setattr(deps, "store", lambda: local)
    return local


def test_a_file_whose_bytes_match_its_digest_is_scanned(objects: ObjectStore) -> None:
    content = b"plain text, nothing to see\n"
    [output] = scan.handle(stage_of(objects, content, content), {})
    assert output.record["scan"]["status"] == "CLEAN"


def test_a_file_whose_bytes_differ_from_its_digest_is_refused(
    objects: ObjectStore,
) -> None:
    stage = stage_of(objects, b"the bytes on disk\n", b"the bytes that were hashed\n")
    with pytest.raises(IntegrityError, match="differs from its recorded sha256"):
        scan.handle(stage, {})
