"""tus 1.0 against the real gateway: every extension, every error status."""

from __future__ import annotations

import base64
import hashlib
import os
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from streams.config import Settings
from streams.storage import ObjectStore

from .conftest import (
    TUS,
    assert_tiles,
    chunks_of,
    create_upload,
    metadata_header,
    patch_upload,
    read_topic,
    sha256_checksum,
    stored_bytes,
)
from .gateways import GatewayProcess

OCTETS = {"Content-Type": "application/offset+octet-stream"}


@pytest.fixture(scope="module")
def short_lived() -> Iterator[GatewayProcess]:
    """A gateway whose uploads expire after 2 s, with a small tenant limit."""
    process = GatewayProcess(
        2,
        "gw-short",
        SLUICE_UPLOAD_EXPIRY_S="2",
        SLUICE_GATEWAY_EXPIRY_SWEEP_S="1",
        SLUICE_GATEWAY_TENANT_MAX_BYTES='{"tlimited": 100}',
        SLUICE_GATEWAY_TENANT_RATE_PER_S="1",
        SLUICE_GATEWAY_TENANT_BURST="20",
    ).start()
    yield process
    process.stop()


def test_options_advertises_every_extension(gateway: httpx.Client) -> None:
    response = gateway.options("/files")

    assert response.status_code == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    extensions = set(response.headers["Tus-Extension"].split(","))
    assert extensions == {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "checksum",
        "termination",
        "concatenation",
    }
    assert set(response.headers["Tus-Checksum-Algorithm"].split(",")) == {
        "sha256",
        "sha1",
        "md5",
        "crc32",
    }
    assert int(response.headers["Tus-Max-Size"]) > 0


@pytest.mark.parametrize("method", ["POST", "HEAD", "PATCH", "DELETE"])
def test_wrong_tus_version_is_412(
    method: str, gateway: httpx.Client, auth: dict[str, str]
) -> None:
    location = create_upload(gateway, auth, 4).headers["Location"]
    url = "/files" if method == "POST" else location
    for version in (None, "0.2.2"):
        headers = {**auth, **OCTETS, "Upload-Length": "4", "Upload-Offset": "0"}
        if version is not None:
            headers["Tus-Resumable"] = version
        response = gateway.request(method, url, headers=headers, content=b"")
        assert response.status_code == 412, (method, version)
        assert response.headers["Tus-Resumable"] == "1.0.0"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "length"),
        ({"Upload-Length": "-1"}, "length"),
        ({"Upload-Length": "ten"}, "length"),
        ({"Upload-Length": "3", "Upload-Defer-Length": "1"}, "length"),
        ({"Upload-Defer-Length": "yes"}, "defer-length"),
        ({"Upload-Length": "3", "Upload-Metadata": "filename"}, "filename"),
        ({"Upload-Length": "3", "Upload-Metadata": "a YQ==,a YQ=="}, "metadata"),
        ({"Upload-Length": "3", "Upload-Concat": "final;"}, "concat"),
        # not ASCII, so not base64 either (was a 500)
        ({"Upload-Length": "3", "Upload-Metadata": b"filename \xe9\xe9"}, "metadata"),
        (
            {"Upload-Length": "3", "Upload-Metadata": "filename eC5i,n " + "A" * 9000},
            "metadata-too-large",
        ),
        (
            {"Upload-Concat": "final;" + " ".join(f"/files/p{i}" for i in range(1001))},
            "concat",
        ),
    ],
)
def test_bad_creation_headers_are_400(
    headers: dict[str, str | bytes],
    reason: str,
    gateway: httpx.Client,
    auth: dict[str, str],
) -> None:
    response = gateway.post(
        "/files",
        headers={
            **TUS,
            **auth,
            "Upload-Metadata": metadata_header(filename="x.bin"),
            **headers,
        },
    )
    assert response.status_code == 400
    assert response.json()["error"] == reason


def test_bad_patch_headers_are_400_415(
    gateway: httpx.Client, auth: dict[str, str]
) -> None:
    location = create_upload(gateway, auth, 4).headers["Location"]

    no_offset = gateway.patch(
        location, headers={**TUS, **auth, **OCTETS}, content=b"ab"
    )
    assert no_offset.status_code == 400
    bad_algorithm = patch_upload(
        gateway, auth, location, 0, b"ab", checksum="sha3 " + "AA=="
    )
    assert bad_algorithm.status_code == 400
    for checksum in ["sha1", "sha1 AAAA", b"sha1 \xe9\xe9"]:
        bad_checksum = gateway.patch(
            location,
            headers={
                **TUS,
                **auth,
                **OCTETS,
                "Upload-Offset": "0",
                "Upload-Checksum": checksum,
            },
            content=b"ab",
        )
        assert bad_checksum.status_code == 400, checksum
        assert bad_checksum.json()["error"] == "checksum"
    wrong_type = gateway.patch(
        location,
        headers={**TUS, **auth, "Upload-Offset": "0", "Content-Type": "text/plain"},
        content=b"ab",
    )
    assert wrong_type.status_code == 415


def test_missing_and_terminated_uploads_are_404(
    gateway: httpx.Client, auth: dict[str, str]
) -> None:
    missing = "/files/" + "0" * 32
    assert gateway.head(missing, headers={**TUS, **auth}).status_code == 404
    assert patch_upload(gateway, auth, missing, 0, b"x").status_code == 404
    assert gateway.delete(missing, headers={**TUS, **auth}).status_code == 404

    location = create_upload(gateway, auth, 4).headers["Location"]
    assert patch_upload(gateway, auth, location, 0, b"ab").status_code == 204
    assert gateway.delete(location, headers={**TUS, **auth}).status_code == 204
    assert gateway.head(location, headers={**TUS, **auth}).status_code == 404
    assert patch_upload(gateway, auth, location, 2, b"cd").status_code == 404


def test_expired_uploads_are_410_and_marked_expired(
    short_lived: GatewayProcess,
    auth: dict[str, str],
    settings: Settings,
    gateway: httpx.Client,
) -> None:
    with short_lived.client() as client:
        created = create_upload(client, auth, 10)
        assert created.status_code == 201
        assert "Upload-Expires" in created.headers
        location = created.headers["Location"]
        upload_id = location.rsplit("/", 1)[-1]
        patched = patch_upload(client, auth, location, 0, b"12345")
        assert patched.status_code == 204
        assert "Upload-Expires" in patched.headers

        time.sleep(2.5)
        assert client.head(location, headers={**TUS, **auth}).status_code == 410
        assert patch_upload(client, auth, location, 5, b"67890").status_code == 410

    # Every instance answers 410, and a sweep commits EXPIRED.
    status = gateway.get(f"/v1/uploads/{upload_id}", headers=auth)
    assert status.status_code == 410

    def marked() -> list[dict[str, Any]]:
        states = [
            s
            for s in read_topic(settings, "upload-state", "UploadState")
            if s["upload_id"] == upload_id and s["status"] == "EXPIRED"
        ]
        return states

    deadline = time.monotonic() + 30
    while not (expired := marked()):
        assert time.monotonic() < deadline
        time.sleep(1)
    assert expired[-1]["offset"] == 5


def test_offset_mismatch_is_409_and_a_retried_patch_changes_nothing(
    gateway: httpx.Client, auth: dict[str, str], settings: Settings
) -> None:
    location = create_upload(gateway, auth, 8).headers["Location"]
    upload_id = location.rsplit("/", 1)[-1]
    assert patch_upload(gateway, auth, location, 0, b"abcd").status_code == 204

    retried = patch_upload(gateway, auth, location, 0, b"abcd")
    ahead = patch_upload(gateway, auth, location, 6, b"gh")

    assert retried.status_code == 409
    assert ahead.status_code == 409
    head = gateway.head(location, headers={**TUS, **auth})
    assert head.headers["Upload-Offset"] == "4"
    assert [c["data"] for c in chunks_of(settings, upload_id)] == [b"abcd"]


def test_too_large_is_413(
    gateway: httpx.Client,
    auth: dict[str, str],
    settings: Settings,
    short_lived: GatewayProcess,
    issue: Callable[..., str],
) -> None:
    over = create_upload(gateway, auth, settings.max_upload_bytes + 1)
    assert over.status_code == 413

    location = create_upload(gateway, auth, 4).headers["Location"]
    overrun = patch_upload(gateway, auth, location, 0, b"12345")
    assert overrun.status_code == 413
    assert (
        gateway.head(location, headers={**TUS, **auth}).headers["Upload-Offset"] == "0"
    )

    limited = {"Authorization": f"Bearer {issue('tlimited')}"}
    with short_lived.client() as client:
        assert create_upload(client, limited, 101).status_code == 413
        assert create_upload(client, limited, 100).status_code == 201


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "md5", "crc32"])
def test_checksums_verify_and_mismatch_is_460(
    algorithm: str, gateway: httpx.Client, auth: dict[str, str], settings: Settings
) -> None:
    data = os.urandom(3000)

    def digest(payload: bytes) -> str:
        if algorithm == "crc32":
            raw = zlib.crc32(payload).to_bytes(4, "big")
        else:
            raw = hashlib.new(algorithm, payload).digest()
        return f"{algorithm} {base64.b64encode(raw).decode()}"

    location = create_upload(gateway, auth, len(data)).headers["Location"]
    upload_id = location.rsplit("/", 1)[-1]

    bad = patch_upload(gateway, auth, location, 0, data, checksum=digest(b"x"))
    assert bad.status_code == 460
    assert chunks_of(settings, upload_id) == []
    good = patch_upload(gateway, auth, location, 0, data, checksum=digest(data))
    assert good.status_code == 204
    assert assert_tiles(chunks_of(settings, upload_id), len(data)) == data


def test_creation_with_upload_verifies_its_checksum(
    gateway: httpx.Client, auth: dict[str, str], settings: Settings
) -> None:
    """A creation-with-upload whose body does not match Upload-Checksum is
    460 with nothing stored; the upload exists (Location) and resumes."""
    data = os.urandom(5000)

    def create(checksum: str) -> httpx.Response:
        return gateway.post(
            "/files",
            headers={
                **TUS,
                **auth,
                **OCTETS,
                "Upload-Length": str(len(data)),
                "Upload-Metadata": metadata_header(filename="summed.bin"),
                "Upload-Checksum": checksum,
            },
            content=data,
        )

    bad = create(sha256_checksum(b"something else"))
    assert bad.status_code == 460
    location = bad.headers["Location"]
    upload_id = location.rsplit("/", 1)[-1]
    head = gateway.head(location, headers={**TUS, **auth})
    assert head.headers["Upload-Offset"] == "0"
    assert chunks_of(settings, upload_id) == []
    resumed = patch_upload(gateway, auth, location, 0, data, sha256_checksum(data))
    assert resumed.status_code == 204

    good = create(sha256_checksum(data))
    assert good.status_code == 201
    assert good.headers["Upload-Offset"] == str(len(data))
    good_id = good.headers["Location"].rsplit("/", 1)[-1]
    assert assert_tiles(chunks_of(settings, good_id), len(data)) == data


def test_creation_with_upload_and_defer_length_reach_the_tables(
    gateway: httpx.Client,
    auth: dict[str, str],
    store: ObjectStore,
    result_of: Callable[..., dict[str, Any]],
) -> None:
    first, second = b"name,value\n", b"a,1\nb,2\n"

    with_body = gateway.post(
        "/files",
        headers={
            **TUS,
            **auth,
            **OCTETS,
            "Upload-Length": str(len(first + second)),
            "Upload-Metadata": metadata_header(filename="inline.csv"),
        },
        content=first,
    )
    assert with_body.status_code == 201
    assert with_body.headers["Upload-Offset"] == str(len(first))
    inline = with_body.headers["Location"]
    assert patch_upload(gateway, auth, inline, len(first), second).status_code == 204

    deferred = gateway.post(
        "/files",
        headers={
            **TUS,
            **auth,
            "Upload-Defer-Length": "1",
            "Upload-Metadata": metadata_header(filename="deferred.csv"),
        },
    )
    assert deferred.status_code == 201
    later = deferred.headers["Location"]
    head = gateway.head(later, headers={**TUS, **auth})
    assert head.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in head.headers
    assert patch_upload(gateway, auth, later, 0, first).status_code == 204
    # The length arrives with the last bytes' PATCH... or after them.
    declared = gateway.patch(
        later,
        headers={
            **TUS,
            **auth,
            **OCTETS,
            "Upload-Offset": str(len(first)),
            "Upload-Length": str(len(first + second)),
        },
        content=second,
    )
    assert declared.status_code == 204

    for location in (inline, later):
        result = result_of(location.rsplit("/", 1)[-1])
        assert result["verdict"] == "CLEAN"
        assert stored_bytes(store, result) == first + second


def test_length_declared_after_the_last_byte_completes_the_file(
    gateway: httpx.Client,
    auth: dict[str, str],
    store: ObjectStore,
    result_of: Callable[..., dict[str, Any]],
) -> None:
    data = b"declared late\n"
    location = gateway.post(
        "/files",
        headers={
            **TUS,
            **auth,
            "Upload-Defer-Length": "1",
            "Upload-Metadata": metadata_header(filename="late.txt"),
        },
    ).headers["Location"]
    assert patch_upload(gateway, auth, location, 0, data).status_code == 204

    declared = gateway.patch(
        location,
        headers={
            **TUS,
            **auth,
            **OCTETS,
            "Upload-Offset": str(len(data)),
            "Upload-Length": str(len(data)),
        },
    )
    assert declared.status_code == 204
    result = result_of(location.rsplit("/", 1)[-1])
    assert stored_bytes(store, result) == data


def test_idempotency_key_returns_the_same_upload(
    gateway: httpx.Client, auth: dict[str, str], short_lived: GatewayProcess
) -> None:
    key = {"Idempotency-Key": f"order-{os.urandom(4).hex()}"}
    first = create_upload(gateway, auth, 10, **key)
    assert first.status_code == 201
    location = first.headers["Location"]
    assert patch_upload(gateway, auth, location, 0, b"12345").status_code == 204

    again = create_upload(gateway, auth, 10, **key)
    with short_lived.client() as other:
        elsewhere = create_upload(other, auth, 10, **key)
    different = create_upload(gateway, auth, 11, **key)

    assert again.status_code == 201
    assert again.headers["Location"] == location
    assert again.headers["Upload-Offset"] == "5"
    assert elsewhere.status_code == 201
    assert elsewhere.headers["Location"].rsplit("/", 1)[-1] == location.rsplit("/")[-1]
    assert different.status_code == 422


def test_termination_frees_the_upload(
    gateway: httpx.Client, auth: dict[str, str]
) -> None:
    location = create_upload(gateway, auth, 10).headers["Location"]
    assert patch_upload(gateway, auth, location, 0, b"123").status_code == 204

    assert gateway.delete(location, headers={**TUS, **auth}).status_code == 204
    assert gateway.delete(location, headers={**TUS, **auth}).status_code == 404


def test_a_tenant_over_its_rate_gets_429(
    short_lived: GatewayProcess, issue: Callable[..., str]
) -> None:
    auth = {"Authorization": f"Bearer {issue('trate' + os.urandom(3).hex())}"}
    with short_lived.client() as client:
        responses = [create_upload(client, auth, 1) for _ in range(40)]

    statuses = [r.status_code for r in responses]
    assert statuses[:20] == [201] * 20
    refused = [r for r in responses if r.status_code == 429]
    assert refused, statuses
    assert int(refused[0].headers["Retry-After"]) >= 1
    assert set(statuses) == {201, 429}
