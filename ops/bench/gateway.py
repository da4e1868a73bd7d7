"""Gateway benchmark: upload throughput, peak memory, progress latency.

Figures, each printed on its own line:

- one 1 GiB upload (one PATCH), client to durable in Kafka, in MB/s;
- 32 parallel uploads totalling 1 GiB, client to durable in Kafka, in MB/s;
- the gateway's peak RSS (VmHWM) over the run;
- p50/p99 of stage-event-to-client latency: for small uploads followed over
  SSE, the time from each stage's record in Kafka to its arrival here.

"Durable in Kafka" is the 204 of the PATCH: the gateway answers after the
transaction holding the bytes committed. The client runs on the same
machine and shares its cores with the gateway and Kafka. The worker is
stopped for the two throughput rounds: it would assemble and scan the same
gigabytes on the same cores, which the pipeline benchmark measures, and in
production gateways and workers run on machines of their own. The progress
round needs it and runs first, with the whole stack. An untimed round of
512 MiB warms Kafka's JVM up before the timed ones, and each timed round
starts after a sync.

Env: SLUICE_BENCH_BYTES (1 GiB), SLUICE_BENCH_PARALLEL (32),
SLUICE_BENCH_PROGRESS_UPLOADS (40). ``python -m ops.bench.gateway`` runs it
alone against the stack the environment points at.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from streams.auth import DevKeys
from streams.config import Settings, get_settings

REPO = Path(__file__).resolve().parents[2]
TUS = {"Tus-Resumable": "1.0.0"}
BLOCK = 8 * 1024 * 1024
WARM_UP_BYTES = 512 * 1024 * 1024
RETRIES: list[int] = []


def _token(settings: Settings) -> dict[str, str]:
    keys = DevKeys.load_or_create(settings.keys_dir)
    token = keys.issue(
        "bench",
        ["uploader", "reader"],
        subject="bench",
        ttl_s=3600,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    return {"Authorization": f"Bearer {token}", **TUS}


def _metadata(name: str) -> str:
    return "filename " + base64.b64encode(name.encode()).decode()


def _gateway_pid(settings: Settings) -> int | None:
    pidfile = settings.home / "run" / "gateway.pid"
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _peak_rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _upload(
    client: httpx.Client, auth: dict[str, str], name: str, size: int, block: bytes
) -> None:
    created = client.post(
        "/files",
        headers={
            **auth,
            "Upload-Length": str(size),
            "Upload-Metadata": _metadata(name),
        },
    )
    created.raise_for_status()

    def body(offset: int) -> Iterator[bytes]:
        left = size - offset
        while left:
            piece = block[: min(len(block), left)]
            left -= len(piece)
            yield piece

    # As tus clients do: after a 503 (Kafka or a budget), wait Retry-After,
    # ask HEAD for the offset and send the rest from there.
    location = created.headers["Location"]
    offset = 0
    for _ in range(100):
        patched = client.patch(
            location,
            headers={
                **auth,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(size - offset),
            },
            content=body(offset),
        )
        if patched.status_code != 503:
            break
        RETRIES.append(1)
        time.sleep(float(patched.headers.get("Retry-After", "1")))
        head = client.head(location, headers=auth)
        head.raise_for_status()
        offset = int(head.headers["Upload-Offset"])
    if patched.status_code != 204:
        raise RuntimeError(f"PATCH {patched.status_code}: {patched.text}")


def _quiesce() -> None:
    """Start a round with no dirty pages left by the one before.

    Kafka writes through the page cache; a previous round's gigabyte being
    written back to disk mid-round slows this one by a varying amount.
    """
    os.sync()


def bench_single(settings: Settings, auth: dict[str, str], total: int) -> float:
    block = os.urandom(BLOCK)
    _quiesce()
    with httpx.Client(base_url=settings.gateway_url, timeout=600) as client:
        started = time.perf_counter()
        _upload(client, auth, "bench-single.bin", total, block)
        elapsed = time.perf_counter() - started
    return total / 1e6 / elapsed


def bench_parallel(
    settings: Settings, auth: dict[str, str], total: int, parallel: int
) -> float:
    size = total // parallel
    blocks = [os.urandom(1024 * 1024) for _ in range(parallel)]
    _quiesce()
    limits = httpx.Limits(max_connections=parallel + 4)
    with httpx.Client(
        base_url=settings.gateway_url, timeout=600, limits=limits
    ) as client:
        started = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            futures = [
                pool.submit(_upload, client, auth, f"bench-{i}.bin", size, blocks[i])
                for i in range(parallel)
            ]
            for future in futures:
                future.result()
        elapsed = time.perf_counter() - started
    return size * parallel / 1e6 / elapsed


def bench_progress(settings: Settings, auth: dict[str, str], count: int) -> list[float]:
    """Kafka-record-to-client delay of every stage event, in ms."""
    delays: list[float] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        data = f"id,n\n{index},{os.urandom(8).hex()}\n".encode()
        with httpx.Client(base_url=settings.gateway_url, timeout=120) as client:
            created = client.post(
                "/files",
                headers={
                    **auth,
                    "Upload-Length": str(len(data)),
                    "Upload-Metadata": _metadata(f"progress-{index}.csv"),
                },
            )
            location = created.headers["Location"]
            upload_id = location.rsplit("/", 1)[-1]
            ready = threading.Event()

            def send() -> None:
                ready.wait(10)
                client.patch(
                    location,
                    headers={
                        **auth,
                        "Upload-Offset": "0",
                        "Content-Type": "application/offset+octet-stream",
                    },
                    content=data,
                )

            sender = threading.Thread(target=send)
            sender.start()
            with httpx.Client(base_url=settings.gateway_url, timeout=120) as follow:
                with follow.stream(
                    "GET", f"/v1/uploads/{upload_id}/events", headers=auth
                ) as stream:
                    ready.set()
                    for line in stream.iter_lines():
                        if not line.startswith("data: "):
                            continue
                        event = json.loads(line[6:])
                        delay = time.time() * 1000 - event["kafka_ts"]
                        if event["stage"] != "received":
                            with lock:
                                delays.append(delay)
                        if event["stage"] == "routed":
                            break
            sender.join()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))
    return delays


def run(settings: Settings) -> list[str]:
    """Run the gateway benchmark; the lines it reports."""
    total = int(os.environ.get("SLUICE_BENCH_BYTES", str(1024**3)))
    parallel = int(os.environ.get("SLUICE_BENCH_PARALLEL", "32"))
    count = int(os.environ.get("SLUICE_BENCH_PROGRESS_UPLOADS", "40"))
    auth = _token(settings)
    pid = _gateway_pid(settings)
    lines = [f"cores: {os.cpu_count()}, load average before: {_load()}"]

    delays = bench_progress(settings, auth, count)
    _stack("down", "worker")
    try:
        # Untimed: a Kafka just started runs its first gigabyte at half speed
        # while the JVM compiles its hot paths.
        bench_parallel(settings, auth, WARM_UP_BYTES, parallel)
        single = bench_single(settings, auth, total)
        many = bench_parallel(settings, auth, total, parallel)
    finally:
        _stack("up")
    lines.append(f"one upload of {total / 2**20:.0f} MiB: {single:.0f} MB/s")
    lines.append(
        f"{parallel} parallel uploads, {total / 2**20:.0f} MiB in all: "
        f"{many:.0f} MB/s ({len(RETRIES)} PATCHes retried after a 503)"
    )
    rss = _peak_rss_mb(pid)
    lines.append(
        "gateway peak RSS: "
        + (f"{rss:.0f} MB" if rss is not None else "unknown (pid not found)")
    )
    if delays:
        ordered = sorted(delays)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        lines.append(
            f"stage event to client over {len(ordered)} events: "
            f"p50 {statistics.median(ordered):.0f} ms, p99 {p99:.0f} ms"
        )
    lines.append(f"load average after: {_load()}")
    return lines


def _stack(*args: str) -> None:
    subprocess.run(
        [str(REPO / "ops" / "scripts" / "stack.sh"), *args],
        check=True,
        capture_output=True,
    )


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    for line in run(get_settings()):
        print(line, flush=True)
