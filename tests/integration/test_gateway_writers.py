"""One writer per upload, and an offset that is the truth, across kills.

Extra gateway instances run as their own processes (ports 23010-23029) so
they can be SIGKILLed mid-request; each test stops what it started.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
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
    patch_in_background,
    patch_upload,
    sha256_checksum,
    stored_bytes,
)
from .gateways import GatewayProcess

PIECE = 256 * 1024


@pytest.fixture(scope="module")
def second() -> Iterator[GatewayProcess]:
    """A second, long-lived gateway instance on the same Kafka."""
    process = GatewayProcess(1, "gw-second").start()
    yield process
    process.stop()


def slow_body(data: bytes, delay_s: float, sent: list[int]) -> Iterator[bytes]:
    for start in range(0, len(data), PIECE):
        piece = data[start : start + PIECE]
        yield piece
        sent[0] += len(piece)
        time.sleep(delay_s)


def until(probe: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.05)


def head_offset(client: httpx.Client, url: str, auth: dict[str, str]) -> int:
    response = client.head(url, headers={**TUS, **auth})
    assert response.status_code == 200, response.status_code
    return int(response.headers["Upload-Offset"])


@pytest.mark.parametrize("where", ["same-instance", "other-instance"])
def test_concurrent_patches_one_wins_and_bytes_tile(
    where: str,
    gateway: httpx.Client,
    second: GatewayProcess,
    auth: dict[str, str],
    settings: Settings,
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    location = create_upload(gateway, auth, len(data)).headers["Location"]
    upload_id = location.rsplit("/", 1)[-1]
    sent = [0]
    url = f"{settings.gateway_url}{httpx.URL(location).path}"

    thread, outcome = patch_in_background(url, auth, 0, slow_body(data, 0.1, sent))
    until(lambda: sent[0] >= 2 * PIECE)
    rival_base = gateway.base_url if where == "same-instance" else second.url
    with httpx.Client(base_url=rival_base, timeout=60) as rival:
        refused = patch_upload(rival, auth, httpx.URL(location).path, 0, data[:1000])
        deleting = rival.delete(httpx.URL(location).path, headers={**TUS, **auth})
    thread.join(60)

    assert refused.status_code in (423, 409), refused.status_code
    if refused.status_code == 423:
        assert int(refused.headers["Retry-After"]) >= 1
    assert deleting.status_code == 423
    (winner,) = outcome
    assert isinstance(winner, httpx.Response) and winner.status_code == 204
    assert assert_tiles(chunks_of(settings, upload_id), len(data)) == data


def test_a_holder_outlasts_rivals_racing_from_several_instances(
    gateway: httpx.Client,
    second: GatewayProcess,
    auth: dict[str, str],
    settings: Settings,
) -> None:
    """Rivals on three instances retry PATCH and DELETE in a tight loop, as
    tus clients retry a 423, while one slow body is written. Each rival that
    fences the holder makes it fence back; the holder must still finish,
    and no rival may get anything but 423 or 409."""
    third = GatewayProcess(11, "gw-third").start()
    data = os.urandom(3 * 1024 * 1024)
    location = create_upload(gateway, auth, len(data)).headers["Location"]
    path = httpx.URL(location).path
    upload_id = path.rsplit("/", 1)[-1]
    sent = [0]
    done = threading.Event()
    answers: list[tuple[str, int]] = []
    lock = threading.Lock()

    def rival(base_url: str, method: str) -> None:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            while not done.is_set():
                if method == "PATCH":
                    status = patch_upload(client, auth, path, 0, data[:1000])
                else:
                    status = client.delete(path, headers={**TUS, **auth})
                with lock:
                    answers.append((method, status.status_code))

    rivals = [
        threading.Thread(target=rival, args=(base, method), daemon=True)
        for base in (second.url, third.url, str(gateway.base_url))
        for method in ("PATCH", "PATCH", "DELETE")
    ]

    def body() -> Iterator[bytes]:
        yield from slow_body(data[:-PIECE], 0.1, sent)
        # Rivals stop before the last piece: a DELETE after completion
        # would be a termination, not a rival.
        done.set()
        for each in rivals:
            each.join(60)
        yield data[-PIECE:]

    try:
        thread, outcome = patch_in_background(
            f"{settings.gateway_url}{path}", auth, 0, body()
        )
        until(lambda: sent[0] >= PIECE)
        for each in rivals:
            each.start()
        thread.join(90)
    finally:
        done.set()
        third.stop()

    (winner,) = outcome
    assert isinstance(winner, httpx.Response), winner
    assert winner.status_code == 204, winner.text
    assert answers, "no rival request was answered"
    refused = {status for _, status in answers}
    assert refused <= {423, 409}, sorted(answers)
    assert assert_tiles(chunks_of(settings, upload_id), len(data)) == data


def test_a_killed_client_resumes_from_head(
    tmp_path: Path,
    settings: Settings,
    auth: dict[str, str],
    gateway: httpx.Client,
    store: ObjectStore,
    result_of: Callable[..., dict[str, Any]],
) -> None:
    data = os.urandom(12 * 1024 * 1024 + 12345)
    source = tmp_path / "resumed.bin"
    source.write_bytes(data)
    script = tmp_path / "slow_upload.py"
    script.write_text(
        "import sys, time\n"
        "from tusclient import client\n"
        "c = client.TusClient(sys.argv[1], headers={'Authorization': sys.argv[2]})\n"
        "u = c.uploader(sys.argv[3], chunk_size=1024 * 1024,\n"
        "               metadata={'filename': 'resumed.bin'})\n"
        "u.set_url(u.create_url()); u.offset = 0\n"
        "print(u.url, flush=True)\n"
        "while True:\n"
        "    u.upload_chunk(); time.sleep(0.3)\n"
    )
    child = subprocess.Popen(
        [
            sys.executable,
            str(script),
            f"{settings.gateway_url}/files",
            auth["Authorization"],
            str(source),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        until(lambda: head_offset(gateway, url, auth) >= 3 * 1024 * 1024)
    finally:
        child.kill()
        child.wait(10)
    offset = head_offset(gateway, url, auth)
    assert 0 < offset < len(data)

    from tusclient import client as tus_client

    resumed = tus_client.TusClient(
        f"{settings.gateway_url}/files", headers=auth
    ).uploader(str(source), url=url, chunk_size=4 * 1024 * 1024)
    assert resumed.get_offset() == offset
    resumed.upload()

    result = result_of(url.rsplit("/", 1)[-1])
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert stored_bytes(store, result) == data


@pytest.mark.parametrize("resume_on", ["restarted", "second"])
def test_a_killed_gateway_loses_nothing_it_acknowledged(
    resume_on: str,
    second: GatewayProcess,
    auth: dict[str, str],
    settings: Settings,
    store: ObjectStore,
    result_of: Callable[..., dict[str, Any]],
) -> None:
    victim = GatewayProcess(3, "gw-victim").start()
    try:
        data = os.urandom(24 * 1024 * 1024 + 777)
        with victim.client() as client:
            location = create_upload(client, auth, len(data)).headers["Location"]
        path = httpx.URL(location).path
        upload_id = path.rsplit("/", 1)[-1]
        sent = [0]
        thread, outcome = patch_in_background(
            f"{victim.url}{path}", auth, 0, slow_body(data, 0.02, sent)
        )
        until(lambda: sent[0] >= len(data) // 2)
        victim.kill()
        thread.join(30)
        assert outcome and not (
            isinstance(outcome[0], httpx.Response) and outcome[0].is_success
        )

        # What Kafka holds, committed: exactly what HEAD must report.
        durable = sum(c["length"] for c in chunks_of(settings, upload_id))
        if resume_on == "restarted":
            victim.start()
            target = victim.url
        else:
            target = second.url

        with httpx.Client(base_url=target, timeout=60) as client:
            offset = head_offset(client, path, auth)
            assert offset == durable
            assert 0 < offset < len(data)
            # The dead writer's lease lapses (or its successor takes it over).
            deadline = time.monotonic() + 3 * settings.gateway_lease_s
            while True:
                resumed = patch_upload(client, auth, path, offset, data[offset:])
                if resumed.status_code != 423:
                    break
                assert time.monotonic() < deadline
                time.sleep(float(resumed.headers["Retry-After"]))
            assert resumed.status_code == 204, resumed.text
            assert head_offset(client, path, auth) == len(data)
    finally:
        victim.stop()

    assert assert_tiles(chunks_of(settings, upload_id), len(data)) == data
    result = result_of(upload_id)
    assert stored_bytes(store, result) == data


@pytest.mark.parametrize("body", ["streamed", "checksummed"])
def test_a_writer_that_lost_its_lease_never_writes_over_the_winner(
    body: str,
    gateway: httpx.Client,
    auth: dict[str, str],
    settings: Settings,
) -> None:
    """An instance stalls (SIGSTOP, as a long GC pause or a frozen VM would)
    in the middle of a body; its lease lapses and another instance finishes
    the upload. When it wakes, its request gets 423 and the upload's state
    stays the winner's: HEAD never goes below what the winner acknowledged."""
    stalled = GatewayProcess(8, "gw-stalled").start()
    data = os.urandom(4 * 1024 * 1024)
    head_start = data[: 4 * PIECE]
    path = httpx.URL(create_upload(gateway, auth, len(data)).headers["Location"]).path
    upload_id = path.rsplit("/", 1)[-1]
    go = threading.Event()
    sent = [0]

    def first_part_then_wait() -> Iterator[bytes]:
        yield from slow_body(head_start, 0, sent)
        go.wait(60)

    extra = {}
    if body == "checksummed":
        extra["Upload-Checksum"] = sha256_checksum(head_start)
    try:
        assert stalled.process is not None
        thread, outcome = patch_in_background(
            f"{stalled.url}{path}", auth, 0, first_part_then_wait(), **extra
        )
        until(lambda: sent[0] == len(head_start))
        time.sleep(1)  # the stalled instance has read what was sent
        stalled.process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(settings.gateway_lease_s + 2)
            offset = head_offset(gateway, path, auth)
            finished = patch_upload(gateway, auth, path, offset, data[offset:])
        finally:
            stalled.process.send_signal(signal.SIGCONT)
        go.set()
        thread.join(60)
        time.sleep(1)  # let both instances read the last state
        with stalled.client() as woken:
            offsets = (head_offset(gateway, path, auth), head_offset(woken, path, auth))
        lost = "lease.lost" in stalled.log_path.read_text()
    finally:
        go.set()
        stalled.stop()

    assert finished.status_code == 204, finished.text
    assert int(finished.headers["Upload-Offset"]) == len(data)
    (answer,) = outcome
    # The stalled request may be answered while its client still sends
    # (then the client sees the connection close) but never with success.
    if isinstance(answer, httpx.Response):
        assert answer.status_code == 423, answer.text
    assert lost
    assert offsets == (len(data), len(data))
    assert assert_tiles(chunks_of(settings, upload_id), len(data)) == data


def _new_upload(
    gateway: httpx.Client, auth: dict[str, str], size: int
) -> tuple[bytes, str]:
    """Random bytes of size and the path of a new upload for them."""
    data = os.urandom(size)
    path = httpx.URL(create_upload(gateway, auth, size).headers["Location"]).path
    return data, path


def test_patches_taking_turns_between_instances_are_never_refused(
    gateway: httpx.Client,
    second: GatewayProcess,
    auth: dict[str, str],
    settings: Settings,
) -> None:
    """One client, one request at a time, alternating instances: each
    instance's view of the upload lags the other's last commit by a few
    milliseconds, and its pooled writer was fenced by the other. Neither
    may turn that into a 423."""
    piece, rounds = 64 * 1024, 100
    data, path = _new_upload(gateway, auth, piece * rounds)
    statuses = []
    with second.client() as other:
        for index in range(rounds):
            client = gateway if index % 2 == 0 else other
            offset = index * piece
            answered = patch_upload(
                client, auth, path, offset, data[offset : offset + piece]
            )
            statuses.append(answered.status_code)

    assert statuses == [204] * rounds
    upload_id = path.rsplit("/", 1)[-1]
    assert assert_tiles(chunks_of(settings, upload_id), len(data)) == data


def test_head_on_another_instance_right_after_a_patch_reports_its_bytes(
    gateway: httpx.Client,
    second: GatewayProcess,
    auth: dict[str, str],
) -> None:
    """A producer's commit returns before its markers make it readable:
    HEAD on the other instance, asked at once, must still count the bytes
    the PATCH just acknowledged (it waits for the transaction to land)."""
    piece, rounds = 16 * 1024, 60
    data, path = _new_upload(gateway, auth, piece * rounds)
    seen = []
    with second.client() as other:
        for index in range(rounds):
            writer, reader = (gateway, other) if index % 2 == 0 else (other, gateway)
            offset = index * piece
            answered = patch_upload(
                writer, auth, path, offset, data[offset : offset + piece]
            )
            assert answered.status_code == 204, answered.text
            acknowledged = int(answered.headers["Upload-Offset"])
            seen.append((acknowledged, head_offset(reader, path, auth)))

    assert all(head == acknowledged for acknowledged, head in seen), seen


def test_a_fenced_writer_closes_without_raising(settings: Settings) -> None:
    """Closing the writer of a request that lost a race must not fail that
    request (it was a 500): librdkafka reports the fencing from flush."""
    from ingest_gateway.producer import UploadWriter
    from streams.events import new_id

    upload_id = new_id()
    topic = settings.topic("upload-state")
    loser = UploadWriter(settings, upload_id)
    loser.init()
    producer = loser._producer
    producer.begin_transaction()
    producer.produce(topic, b"first", key=upload_id.encode())
    producer.flush(10)
    winner = UploadWriter(settings, upload_id)
    winner.init()  # fences loser mid-transaction
    for _ in range(20):
        producer.produce(topic, b"late", key=upload_id.encode())
    loser.close()
    winner.close()
