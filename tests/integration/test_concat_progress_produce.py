"""Parallel parts, live progress and direct producers, end to end."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import websockets
from tusclient import client as tus_client

from streams.config import Settings
from streams.storage import ObjectStore

from .conftest import (
    TUS,
    chunks_of,
    create_upload,
    metadata_header,
    patch_upload,
    stored_bytes,
)
from .gateways import GatewayProcess

PARTIAL = {"Upload-Concat": "partial"}
STAGES = ["received", "assembled", "scanned", "typed", "deduplicated", "routed"]


def test_parallel_parts_concatenate_byte_identically(
    tmp_path: Path,
    settings: Settings,
    auth: dict[str, str],
    gateway: httpx.Client,
    store: ObjectStore,
    result_of: Callable[..., dict[str, Any]],
) -> None:
    data = os.urandom(10 * 1024 * 1024 + 4321)
    bounds = [0, 3_000_000, 3_000_001, 7_654_321, len(data)]
    client = tus_client.TusClient(
        f"{settings.gateway_url}/files",
        headers={**auth, "Upload-Concat": "partial"},
    )

    def upload_part(index: int) -> str:
        path = tmp_path / f"part{index}"
        path.write_bytes(data[bounds[index] : bounds[index + 1]])
        uploader = client.uploader(str(path), chunk_size=2 * 1024 * 1024)
        uploader.upload()
        return str(uploader.url)

    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(upload_part, range(4)))
    # Parts are not files: nothing of theirs reaches the agents' topic.
    for url in parts:
        assert chunks_of(settings, url.rsplit("/", 1)[-1]) == []

    final = gateway.post(
        "/files",
        headers={
            **TUS,
            **auth,
            "Upload-Concat": "final;" + " ".join(parts),
            "Upload-Metadata": metadata_header(filename="joined.bin"),
        },
    )
    assert final.status_code == 201, final.text
    location = final.headers["Location"]
    head = gateway.head(location, headers={**TUS, **auth})
    assert head.headers["Upload-Offset"] == str(len(data))
    assert head.headers["Upload-Concat"].startswith("final;")

    result = result_of(location.rsplit("/", 1)[-1])
    assert result["filename"] == "joined.bin"
    assert stored_bytes(store, result) == data
    patched = gateway.patch(
        location,
        headers={
            **TUS,
            **auth,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
        content=b"x",
    )
    assert patched.status_code == 403


def test_parts_cut_in_larger_chunks_concatenate_on_a_gateway_of_smaller_ones(
    settings: Settings,
    auth: dict[str, str],
    gateway: httpx.Client,
    store: ObjectStore,
    result_of: Callable[..., dict[str, Any]],
) -> None:
    """A concatenation copies its parts' chunk records as they were cut: an
    instance configured with smaller chunks (after a change of
    SLUICE_CHUNK_BYTES, or during a rolling one) must still take them."""
    data = os.urandom(3 * settings.chunk_bytes + 17)
    half = len(data) // 2
    parts = []
    for piece in (data[:half], data[half:]):
        created = create_upload(gateway, auth, len(piece), **PARTIAL)
        location = created.headers["Location"]
        assert patch_upload(gateway, auth, location, 0, piece).status_code == 204
        parts.append(location)

    small = GatewayProcess(12, "gw-small-chunks", SLUICE_CHUNK_BYTES="1024").start()
    try:
        with small.client() as client:
            final = client.post(
                "/files",
                headers={
                    **TUS,
                    **auth,
                    "Upload-Concat": "final;" + " ".join(parts),
                    "Upload-Metadata": metadata_header(filename="rejoined.bin"),
                },
            )
    finally:
        small.stop()
    assert final.status_code == 201, final.text
    result = result_of(final.headers["Location"].rsplit("/", 1)[-1])
    assert stored_bytes(store, result) == data


def test_a_final_upload_refuses_foreign_or_unfinished_parts(
    gateway: httpx.Client, auth: dict[str, str], issue: Callable[..., str]
) -> None:
    partial = {**TUS, **auth, "Upload-Concat": "partial", "Upload-Length": "4"}
    unfinished = gateway.post("/files", headers=partial).headers["Location"]
    other = {"Authorization": f"Bearer {issue('someone-else')}"}

    def final(headers: dict[str, str], *urls: str) -> httpx.Response:
        return gateway.post(
            "/files",
            headers={
                **TUS,
                **headers,
                "Upload-Concat": "final;" + " ".join(urls),
                "Upload-Metadata": metadata_header(filename="f.bin"),
            },
        )

    assert final(auth, unfinished).status_code == 400
    assert final(other, unfinished).status_code == 404


def _follow_sse(
    url: str, auth: dict[str, str], events: list[dict[str, Any]]
) -> threading.Thread:
    def run() -> None:
        with (
            httpx.Client(timeout=120) as client,
            client.stream("GET", url, headers=auth) as response,
        ):
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    event["received_at"] = time.time() * 1000
                    events.append(event)
                    if event["stage"] == "routed":
                        return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def _follow_ws(url: str, token: str) -> list[dict[str, Any]]:
    events = []
    async with websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}
    ) as socket:
        async for frame in socket:
            event = json.loads(frame)
            if event["stage"] == "heartbeat":
                continue
            event["received_at"] = time.time() * 1000
            events.append(event)
            if event["stage"] == "routed":
                break
    return events


def test_progress_streams_over_sse_and_websocket(
    settings: Settings,
    auth: dict[str, str],
    gateway: httpx.Client,
    issue: Callable[..., str],
    tenant: str,
) -> None:
    data = b"id,name\n1,progress\n"
    created = gateway.post(
        "/files",
        headers={
            **TUS,
            **auth,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": metadata_header(filename="progress.csv"),
        },
    )
    location = created.headers["Location"]
    upload_id = location.rsplit("/", 1)[-1]
    base = settings.gateway_url
    sse: list[dict[str, Any]] = []
    thread = _follow_sse(f"{base}/v1/uploads/{upload_id}/events", auth, sse)
    ws_url = base.replace("http", "ws", 1) + f"/v1/uploads/{upload_id}/ws"

    async def both() -> list[dict[str, Any]]:
        watcher = asyncio.create_task(
            _follow_ws(ws_url, auth["Authorization"].removeprefix("Bearer "))
        )
        await asyncio.sleep(0.5)
        patched = await asyncio.to_thread(
            gateway.patch,
            location,
            headers={
                **TUS,
                **auth,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
            content=data,
        )
        assert patched.status_code == 204
        return await asyncio.wait_for(watcher, 120)

    ws = asyncio.run(both())
    thread.join(120)

    for events in (sse, ws):
        assert [e["stage"] for e in events] == STAGES
        assert events[-1]["verdict"] == "CLEAN"
        for event in events[1:]:
            assert event["received_at"] - event["kafka_ts"] < 1000, event

    # Another tenant sees nothing, not even that the upload exists.
    other = {"Authorization": f"Bearer {issue('someone-else')}"}
    refused = gateway.get(f"/v1/uploads/{upload_id}/events", headers=other)
    assert refused.status_code == 404


def test_sluice_produce_goes_through_the_same_agents(
    tmp_path: Path,
    settings: Settings,
    auth: dict[str, str],
    tenant: str,
    gateway: httpx.Client,
    store: ObjectStore,
    result_of: Callable[..., dict[str, Any]],
) -> None:
    data = os.urandom(2 * 1024 * 1024 + 99)
    path = tmp_path / "direct.bin"
    path.write_bytes(data)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "produce",
            str(path),
            str(empty),
            "--tenant",
            tenant,
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    produced = {Path(r["path"]).name: r["upload_id"] for r in json.loads(done.stdout)}

    for name, content in (("direct.bin", data), ("empty.txt", b"")):
        upload_id = produced[name]
        result = result_of(upload_id)
        assert result["tenant"] == tenant
        assert stored_bytes(store, result) == content
        receipt = gateway.get(f"/v1/uploads/{upload_id}", headers=auth).json()
        assert receipt["source"] == "direct"
        assert receipt["status"] == "COMPLETE"
