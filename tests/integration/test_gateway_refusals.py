"""Bad requests are refused with the status tus names, and nothing is written."""

from __future__ import annotations

import base64

import httpx
import pytest

from streams import topics
from streams.config import Settings
from streams.storage import ObjectStore

from .conftest import (
    TUS,
    create_upload,
    patch_upload,
    read_topic,
    sha256_checksum,
    topic_end_offsets,
)


def _chunks_of(settings: Settings, upload_id: str) -> list[dict[str, object]]:
    return [
        c
        for c in read_topic(settings, topics.CHUNKS, "Chunk")
        if c["upload_id"] == upload_id
    ]


def test_checksum_mismatch_is_460_and_nothing_reaches_kafka(
    gateway: httpx.Client, auth: dict[str, str], settings: Settings
) -> None:
    data = b"the bytes the client meant to send\n"
    created = create_upload(gateway, auth, len(data))
    assert created.status_code == 201
    location = created.headers["Location"]
    upload_id = location.rsplit("/", 1)[-1]

    refused = patch_upload(
        gateway, auth, location, 0, data, checksum=sha256_checksum(b"other bytes")
    )
    assert refused.status_code == 460
    assert refused.json()["error"] == "checksum"

    head = gateway.head(location, headers={**TUS, **auth})
    assert head.headers["Upload-Offset"] == "0"
    assert _chunks_of(settings, upload_id) == []

    # The same bytes with the right checksum are accepted afterwards.
    accepted = patch_upload(
        gateway, auth, location, 0, data, checksum=sha256_checksum(data)
    )
    assert accepted.status_code == 204
    assert accepted.headers["Upload-Offset"] == str(len(data))
    chunks = _chunks_of(settings, upload_id)
    assert [c["data"] for c in chunks] == [data]


def test_patch_at_the_wrong_offset_is_409(
    gateway: httpx.Client, auth: dict[str, str]
) -> None:
    created = create_upload(gateway, auth, 10)
    location = created.headers["Location"]

    ahead = patch_upload(gateway, auth, location, 5, b"12345")
    assert ahead.status_code == 409

    first = patch_upload(gateway, auth, location, 0, b"12345")
    assert first.status_code == 204
    replayed_offset = patch_upload(gateway, auth, location, 0, b"12345")
    assert replayed_offset.status_code == 409

    head = gateway.head(location, headers={**TUS, **auth})
    assert head.headers["Upload-Offset"] == "5"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../../etc/passwd", "filename-traversal"),
        ("report\x00.pdf", "filename-nul-byte"),
        ("dir/report.pdf", "filename-path-component"),
        ("C:\\Windows\\evil.exe", "filename-path-component"),
        ("bell\x07.txt", "filename-control-character"),
        ("invoice\u202etxt.exe", "filename-bidi-override"),
        ("CON.txt", "filename-reserved-name"),
        ("notes.txt.", "filename-trailing-dot-or-space"),
        ("é" * 128 + ".txt", "filename-too-long"),
    ],
)
def test_bad_file_names_are_400_and_nothing_is_written(
    name: str,
    reason: str,
    gateway: httpx.Client,
    auth: dict[str, str],
    settings: Settings,
    store: ObjectStore,
    tenant: str,
) -> None:
    before = {
        short: topic_end_offsets(settings, short)
        for short in (topics.UPLOAD_STATE, topics.CHUNKS)
    }

    refused = create_upload(gateway, auth, 4, filename=name)

    assert refused.status_code == 400
    assert refused.json()["error"] == reason
    assert "Location" not in refused.headers
    after = {
        short: topic_end_offsets(settings, short)
        for short in (topics.UPLOAD_STATE, topics.CHUNKS)
    }
    assert after == before
    assert store.list_sizes(f"staging/{tenant}") == {}


def test_metadata_that_is_not_base64_is_400(
    gateway: httpx.Client, auth: dict[str, str]
) -> None:
    refused = gateway.post(
        "/files",
        headers={
            **TUS,
            **auth,
            "Upload-Length": "3",
            "Upload-Metadata": "filename not*base64",
        },
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "metadata"


def test_missing_or_forged_token_is_401(gateway: httpx.Client) -> None:
    missing = gateway.post("/files", headers={**TUS, "Upload-Length": "1"})
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")

    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=")
    claims = base64.urlsafe_b64encode(b'{"tenant":"acme","roles":["admin"]}')
    forged = f"{header.decode()}.{claims.rstrip(b'=').decode()}."
    refused = gateway.post(
        "/files",
        headers={**TUS, "Upload-Length": "1", "Authorization": f"Bearer {forged}"},
    )
    assert refused.status_code == 401


def test_another_tenants_upload_is_404(
    gateway: httpx.Client, auth: dict[str, str], issue: object
) -> None:
    created = create_upload(gateway, auth, 10)
    location = created.headers["Location"]
    assert callable(issue)
    other = {"Authorization": f"Bearer {issue('someone-else')}"}

    assert gateway.head(location, headers={**TUS, **other}).status_code == 404
    assert patch_upload(gateway, other, location, 0, b"x").status_code == 404
    missing = location.rsplit("/", 1)[0] + "/" + "0" * 32
    assert gateway.head(missing, headers={**TUS, **auth}).status_code == 404
