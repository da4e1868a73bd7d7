"""HTTP hygiene and backpressure: OpenAPI, headers, CORS, TLS, budgets."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from streams.config import Settings

from .conftest import (
    TUS,
    assert_tiles,
    chunks_of,
    create_upload,
    metadata_header,
    patch_in_background,
    patch_upload,
    sha256_checksum,
)
from .gateways import GatewayProcess


def test_openapi_describes_the_tus_surface(gateway: httpx.Client) -> None:
    spec = gateway.get("/openapi.json").json()

    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]["/files/{upload_id}"]) == {"head", "patch", "delete"}
    assert "460" in spec["paths"]["/files/{upload_id}"]["patch"]["responses"]


def test_security_headers_on_every_response(
    gateway: httpx.Client, auth: dict[str, str]
) -> None:
    for response in (
        gateway.get("/healthz"),
        gateway.options("/files"),
        create_upload(gateway, auth, 1),
        gateway.head("/files/" + "0" * 32, headers={**TUS, **auth}),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Referrer-Policy"] == "no-referrer"


@pytest.fixture(scope="module")
def browser_facing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A gateway with CORS for one origin, over TLS with a test certificate."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(folder)
    process = GatewayProcess(
        4,
        "gw-browser",
        SLUICE_GATEWAY_CORS_ORIGINS='["https://app.example"]',
        SLUICE_GATEWAY_TLS_CERT=str(cert),
        SLUICE_GATEWAY_TLS_KEY=str(key),
    ).start()
    yield process, cert
    process.stop()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_cors_exposes_tus_headers_over_tls(
    browser_facing: tuple[GatewayProcess, Path], auth: dict[str, str]
) -> None:
    process, cert = browser_facing
    assert process.url.startswith("https://")
    trust = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(base_url=process.url, verify=trust, timeout=30) as client:
        preflight = client.options(
            "/files",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "tus-resumable,upload-length",
            },
        )
        created = create_upload(client, {**auth, "Origin": "https://app.example"}, 3)
        foreign = client.options(
            "/files",
            headers={
                "Origin": "https://evil.example",
                "Access-Control-Request-Method": "POST",
            },
        )

    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert created.status_code == 201
    exposed = created.headers["Access-Control-Expose-Headers"].lower()
    for header in ("location", "upload-offset", "upload-expires", "tus-resumable"):
        assert header in exposed
    assert "max-age" in created.headers["Strict-Transport-Security"]
    assert "Access-Control-Allow-Origin" not in foreign.headers


def test_over_the_in_flight_budget_is_503_with_retry_after(
    auth: dict[str, str],
) -> None:
    tight = GatewayProcess(
        5,
        "gw-tight",
        SLUICE_GATEWAY_BATCH_BYTES=str(1024 * 1024),
        SLUICE_GATEWAY_MAX_INFLIGHT_BYTES=str(2 * 1024 * 1024),
    ).start()
    try:
        with tight.client() as client:
            first = create_upload(client, auth, 4 * 1024 * 1024).headers["Location"]
            second = create_upload(client, auth, 10).headers["Location"]
            sent = threading.Event()

            def slow() -> Iterator[bytes]:
                for _ in range(16):
                    yield os.urandom(256 * 1024)
                    sent.set()
                    time.sleep(0.25)

            thread, outcome = patch_in_background(
                tight.url + httpx.URL(first).path, auth, 0, slow()
            )
            sent.wait(10)
            # The gateway counts the slow body once its first bytes arrive:
            # ask until it does (the slow PATCH lasts about 4 s).
            # Each probe writes an upload of its own, so an early probe that
            # is still accepted leaves `second` untouched.
            deadline = time.monotonic() + 3
            while True:
                probe = create_upload(client, auth, 10).headers["Location"]
                refused = patch_upload(client, auth, probe, 0, b"0123456789")
                if refused.status_code == 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            thread.join(60)
            accepted = patch_upload(client, auth, second, 0, b"0123456789")
    finally:
        tight.stop()

    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) >= 1
    assert outcome[0].status_code == 204
    assert accepted.status_code == 204


@pytest.mark.parametrize("quiet_as", ["a-byte-now-and-then", "nothing-at-all"])
def test_a_silent_body_gives_back_budget_a_newcomer_waits_for(
    auth: dict[str, str], quiet_as: str
) -> None:
    """A body whose share grew, then whose client went quiet, never reaches
    its next batch: it commits what it holds and shrinks for the newcomer,
    whether a byte still trickles in or none does."""
    mib = 1024 * 1024
    gateway = GatewayProcess(
        7,
        "gw-quiet",
        SLUICE_GATEWAY_BATCH_BYTES=str(2 * mib),
        SLUICE_GATEWAY_MAX_INFLIGHT_BYTES=str(6 * mib),
    ).start()
    quiet = threading.Event()
    stop = threading.Event()
    try:
        with gateway.client() as client:
            slow = create_upload(client, auth, 16 * mib).headers["Location"]
            probe = create_upload(client, auth, 10).headers["Location"]

            def body() -> Iterator[bytes]:
                # Fast enough to grow the share to the whole budget...
                for _ in range(12):
                    yield os.urandom(256 * 1024)
                quiet.set()
                # ...then a byte now and then, or nothing until told.
                while not stop.is_set():
                    if quiet_as == "nothing-at-all":
                        stop.wait()
                        break
                    yield b"x"
                    time.sleep(0.5)

            thread, outcome = patch_in_background(
                gateway.url + httpx.URL(slow).path, auth, 0, body()
            )
            assert quiet.wait(30)
            time.sleep(1)
            started = time.monotonic()
            answered = patch_upload(client, auth, probe, 0, b"0123456789")
            waited = time.monotonic() - started
            stop.set()
            thread.join(60)
            offset = client.head(slow, headers={**TUS, **auth}).headers["Upload-Offset"]
    finally:
        stop.set()
        gateway.stop()

    assert answered.status_code == 204, answered.text
    assert waited < 4  # the budget's wait is 5 s: it was not waited out
    assert outcome[0].status_code == 204
    assert int(offset) >= 12 * 256 * 1024


@pytest.mark.parametrize("body", ["streamed", "checksummed", "creation-with-upload"])
def test_a_body_silent_past_the_idle_limit_is_408_and_keeps_what_arrived(
    body: str, auth: dict[str, str], settings: Settings
) -> None:
    """A client that stops sending mid-body is cut off after
    SLUICE_GATEWAY_BODY_IDLE_S, rather than holding its upload's lease and
    budget for ever. What arrived is committed (nothing, when a checksum
    covers the whole body), and the client resumes from HEAD: a creation
    cut short says where its upload is."""
    gateway = GatewayProcess(9, "gw-idle", SLUICE_GATEWAY_BODY_IDLE_S="2").start()
    data = os.urandom(1024 * 1024)
    part = data[: 300 * 1024]
    common = [
        f"Host: 127.0.0.1:{gateway.port}",
        "Tus-Resumable: 1.0.0",
        f"Authorization: {auth['Authorization']}",
        "Content-Type: application/offset+octet-stream",
        f"Content-Length: {len(data)}",
    ]
    try:
        with gateway.client() as client:
            if body == "creation-with-upload":
                request = [
                    "POST /files HTTP/1.1",
                    *common,
                    f"Upload-Length: {len(data)}",
                    f"Upload-Metadata: {metadata_header(filename='idle.bin')}",
                ]
            else:
                created = create_upload(client, auth, len(data))
                path = httpx.URL(created.headers["Location"]).path
                request = [f"PATCH {path} HTTP/1.1", *common, "Upload-Offset: 0"]
            if body == "checksummed":
                request.append(f"Upload-Checksum: {sha256_checksum(data)}")
            with socket.create_connection(("127.0.0.1", gateway.port), 30) as sock:
                sock.sendall("\r\n".join(request).encode() + b"\r\n\r\n" + part)
                started = time.monotonic()
                answer = b""
                while b"body-idle" not in answer:
                    received = sock.recv(65536)  # the client sends nothing more
                    if not received:
                        break
                    answer += received
                waited = time.monotonic() - started
            lines = answer.partition(b"\r\n\r\n")[0].decode().split("\r\n")[1:]
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines)
            }
            if body == "creation-with-upload":
                path = httpx.URL(headers["location"]).path
            head = client.head(path, headers={**TUS, **auth})
            offset = int(head.headers["Upload-Offset"])
            resumed = patch_upload(client, auth, path, offset, data[offset:])
    finally:
        gateway.stop()

    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body-idle" in answer
    assert headers["connection"] == "close"  # what trickles in later is no request
    assert 2 <= waited < 15
    assert offset == (0 if body == "checksummed" else len(part))
    assert resumed.status_code == 204, resumed.text
    upload_id = path.rsplit("/", 1)[-1]
    assert assert_tiles(chunks_of(settings, upload_id), len(data)) == data


@pytest.mark.parametrize("client_is", ["silent", "still-sending"])
def test_sigterm_cuts_off_a_body_after_the_grace_period_keeping_what_arrived(
    client_is: str,
    gateway: httpx.Client,
    auth: dict[str, str],
    settings: Settings,
) -> None:
    """A gateway told to stop waits for bodies still arriving, but not for
    ever: after SLUICE_GATEWAY_SHUTDOWN_GRACE_S it ends them with 503 and
    Retry-After, commits what arrived, and exits. HEAD (on any instance)
    then says exactly how much, and the client resumes from there."""
    stopping = GatewayProcess(10, "gw-grace", SLUICE_GATEWAY_SHUTDOWN_GRACE_S="2")
    stopping.start()
    go = threading.Event()
    data = os.urandom(1_000_000)
    first = 300_000

    def body() -> Iterator[bytes]:
        yield data[:first]
        if client_is == "silent":
            go.wait(60)
        else:  # a byte at a time, never quiet for long
            for i in range(first, len(data)):
                if go.wait(0.05):
                    return
                yield data[i : i + 1]

    try:
        with stopping.client() as client:
            path = httpx.URL(
                create_upload(client, auth, len(data)).headers["Location"]
            ).path
            thread, outcome = patch_in_background(stopping.url + path, auth, 0, body())
            time.sleep(1)
            assert stopping.process is not None
            started = time.monotonic()
            stopping.process.terminate()
            stopping.process.wait(20)
            took = time.monotonic() - started
    finally:
        go.set()
        stopping.stop()
    thread.join(10)

    assert 2 <= took < 10
    # uvicorn ends by re-raising the signal it shut down for
    assert stopping.process.returncode in (0, -signal.SIGTERM)
    (response,) = outcome
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.headers["connection"] == "close"
    kept = int(gateway.head(path, headers={**TUS, **auth}).headers["Upload-Offset"])
    if client_is == "silent":
        assert kept == first
    else:
        assert first <= kept < len(data)
    assert patch_upload(gateway, auth, path, kept, data[kept:]).status_code == 204
    upload_id = path.rsplit("/", 1)[-1]
    assert assert_tiles(chunks_of(settings, upload_id), len(data)) == data
