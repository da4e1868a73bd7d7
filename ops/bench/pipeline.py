"""Pipeline benchmark: worker memory on a 4 GiB upload, and throughput.

Reports, in one run:

* the worker's peak RSS while it assembles a 4 GiB upload (larger than
  clamd's StreamMaxLength, so it is held SUSPICIOUS without being streamed
  to clamd) and while it assembles and scans a 400 MiB one;
* pipeline throughput, MB/s from "upload complete" to "verdict queryable",
  on 400 MiB files, beside clamd alone scanning the same bytes (INSTREAM
  from the same disk, clamd's cache off), in rounds, and the median of
  their ratios.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

from streams.auth import DevKeys
from streams.clamd import Clamd
from streams.client import WarehouseClient, upload_files
from streams.config import Settings

MiB = 1024 * 1024
# SLUICE_BENCH_BIG_MIB=0 skips the large upload (quicker runs while tuning).
BIG = int(os.environ.get("SLUICE_BENCH_BIG_MIB", "4096")) * MiB
SCANNED = 400 * MiB
# Rounds of pipeline-then-clamd-alone; the ratio reported is their median.
ROUNDS = int(os.environ.get("SLUICE_BENCH_ROUNDS", "3"))
TENANT = "bench"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """Samples a process's RSS every 100 ms; remembers the peak."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.baseline = rss_bytes(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.peak = max(self.peak, rss_bytes(self._pid))
            except OSError:
                return


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(8 * MiB, left))
            out.write(block)
            left -= len(block)
        # On disk before anything is timed: writeback of these pages would
        # otherwise land in the middle of a measurement.
        out.flush()
        os.fsync(out.fileno())
    return path


def ingest(
    path: Path, settings: Settings, headers: dict[str, str], worker_pid: int
) -> tuple[float, float, PeakRss, dict[str, object]]:
    """Upload seconds, upload-complete-to-verdict seconds, worker RSS, result."""
    warehouse = WarehouseClient(f"http://{settings.warehouse_listen}", headers)
    try:
        with PeakRss(worker_pid) as rss:
            started = time.monotonic()
            [uploaded] = upload_files(
                [path],
                gateway_url=settings.gateway_url,
                headers=headers,
                chunk_size=64 * MiB,
                show_progress=False,
            )
            uploaded_at = time.monotonic()
            upload_id = str(uploaded["upload_id"])
            results = warehouse.wait_for_results([upload_id], timeout_s=1800)
            done_at = time.monotonic()
    finally:
        warehouse.close()
    return uploaded_at - started, done_at - uploaded_at, rss, results[upload_id]


def run(settings: Settings) -> list[str]:
    token = DevKeys.load_or_create(settings.keys_dir).issue(
        TENANT,
        ["uploader", "reader"],
        subject="bench",
        ttl_s=7200,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    headers = {"Authorization": f"Bearer {token}"}
    worker_pid = int((settings.home / "run" / "worker.pid").read_text())
    work = settings.home / "bench"
    work.mkdir(exist_ok=True)
    lines = []

    if BIG:
        lines += large_upload(work, settings, headers, worker_pid)
    lines += scanned_upload(work, settings, headers, worker_pid)
    return lines


def large_upload(
    work: Path, settings: Settings, headers: dict[str, str], worker_pid: int
) -> list[str]:
    big = random_file(work / "big.bin", BIG)
    upload_s, verdict_s, rss, result = ingest(big, settings, headers, worker_pid)
    big.unlink()
    return [
        f"4 GiB upload: {BIG / MiB / upload_s:.0f} MB/s client to Kafka, "
        f"verdict {result['verdict']} {verdict_s:.1f} s after upload complete",
        f"worker RSS assembling 4 GiB: peak {rss.peak / MiB:.0f} MB "
        f"(baseline {rss.baseline / MiB:.0f} MB, "
        f"+{(rss.peak - rss.baseline) / MiB:.0f} MB)",
    ]


def scanned_upload(
    work: Path, settings: Settings, headers: dict[str, str], worker_pid: int
) -> list[str]:
    """clamd alone, then the pipeline, on each round's file; the median ratio."""
    lines, ratios = [], []
    clamd = Clamd(settings.clamd_host, settings.clamd_port, timeout_s=600)
    for round_ in range(1, ROUNDS + 1):
        # The same bytes for both (the bench stack's clamd keeps no cache):
        # how long clamd scans depends on what the bytes happen to contain.
        scanned = random_file(work / "scanned.bin", SCANNED)
        started = time.monotonic()
        with scanned.open("rb") as handle:
            reply = clamd.scan(iter(lambda: handle.read(MiB), b""))
        alone = SCANNED / MiB / (time.monotonic() - started)
        upload_s, verdict_s, rss, result = ingest(
            scanned, settings, headers, worker_pid
        )
        pipeline = SCANNED / MiB / verdict_s
        scanned.unlink()
        ratios.append(pipeline / alone)
        lines += [
            f"round {round_}: 400 MiB file {result['verdict']} ({reply.status} "
            f"from clamd alone), worker RSS peak {rss.peak / MiB:.0f} MB "
            f"(+{(rss.peak - rss.baseline) / MiB:.0f} MB); pipeline "
            f"{pipeline:.0f} MB/s upload-complete to verdict, clamd alone "
            f"{alone:.0f} MB/s, ratio {pipeline / alone:.2f}",
        ]
    lines.append(
        f"pipeline / clamd alone: median ratio {statistics.median(ratios):.2f} "
        f"over {ROUNDS} rounds (target >= 0.80)"
    )
    return lines
