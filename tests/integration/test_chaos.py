"""Workers killed with SIGKILL mid-stream: nothing lost, nothing duplicated.

200 files (mixed sizes up to 64 MiB, a tenth infected) are uploaded while a
worker is killed at random moments and restarted. At the end every upload
has exactly one terminal result, every clean file is byte-identical in its
final place, no infected bytes exist outside quarantine, staging is empty
and no dead letter names these uploads. The second test does the same with
two workers sharing the partitions, one of them killed.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops.demo.corpus import CLAMAV_TESTFILES_DIR, EICAR
from streams import topics
from streams.client import WarehouseClient, upload_files
from streams.config import Settings
from streams.storage import ObjectStore

from .conftest import read_topic, stack_script

pytestmark = pytest.mark.chaos

FILES = 200
KILLS = 5
MiB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    name: str
    sha256: str
    infected: bool


def build_files(folder: Path, rng: random.Random) -> list[Sample]:
    """A tenth infected (real test files), the rest random bytes of mixed size."""
    clam = (CLAMAV_TESTFILES_DIR / "clam.exe").read_bytes()
    samples = []
    for index in range(FILES):
        if index % 10 == 0:
            # EICAR (padded, so each copy differs) and ClamAV's clam.exe.
            data = EICAR + b"\n" * index if index % 20 == 0 else clam
            name, infected = f"infected-{index:03d}.bin", True
        else:
            roll = rng.random()
            if roll < 0.03:
                size = rng.randint(32 * MiB, 64 * MiB)
            elif roll < 0.15:
                size = rng.randint(1 * MiB, 8 * MiB)
            else:
                size = rng.randint(1, 256 * 1024)
            data = rng.randbytes(size)
            name, infected = f"clean-{index:03d}.bin", False
        (folder / name).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        samples.append(Sample(name, digest, infected))
    return samples


class WorkerKiller:
    """Kills a worker with SIGKILL at random moments and restarts it."""

    def __init__(
        self,
        pid_of: Callable[[], int],
        restart: Callable[[], None],
        kills: int,
        rng: random.Random,
    ) -> None:
        self._pid_of = pid_of
        self._restart = restart
        self._kills = kills
        self._rng = rng
        self.done = 0
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join(timeout=600)

    def _run(self) -> None:
        try:
            for _ in range(self._kills):
                time.sleep(self._rng.uniform(1.5, 6.0))
                os.killpg(self._pid_of(), signal.SIGKILL)
                time.sleep(0.5)
                self._restart()
                self.done += 1
        except BaseException as exc:  # reported by the test, not lost
            self.errors.append(exc)


def stack_worker_pid(settings: Settings) -> int:
    return int((settings.home / "run" / "worker.pid").read_text().strip())


@pytest.fixture
def second_worker(settings: Settings, tmp_path: Path) -> Iterator[Callable[[], int]]:
    """Start another worker on its own ports; yields a function giving its pid."""
    processes: list[subprocess.Popen[bytes]] = []
    env = {
        **os.environ,
        "SLUICE_WORKER_NAME": "worker-2",
        "SLUICE_WORKER_WEB_PORT": str(settings.worker_web_port + 3),
        "SLUICE_WORKER_METRICS_PORT": str(settings.worker_metrics_port + 3),
    }

    def start() -> int:
        log = (tmp_path / "worker-2.log").open("ab")
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "sluice"), "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.append(process)
        deadline = time.monotonic() + 90
        while b"Worker ready" not in (tmp_path / "worker-2.log").read_bytes():
            assert process.poll() is None, "second worker exited during start-up"
            assert time.monotonic() < deadline, "second worker not ready in 90s"
            time.sleep(0.5)
        return process.pid

    yield start
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def ingest_with_chaos(
    folder: Path,
    samples: list[Sample],
    settings: Settings,
    auth: dict[str, str],
    killer: WorkerKiller,
) -> dict[str, str]:
    """Upload every sample from four threads while the killer runs."""
    killer.start()

    def one(sample: Sample) -> tuple[str, str | None]:
        [result] = upload_files(
            [folder / sample.name],
            gateway_url=settings.gateway_url,
            headers=auth,
            chunk_size=4 * MiB,
            show_progress=False,
        )
        return sample.name, result["upload_id"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        uploads = dict(pool.map(one, samples))
    killer.join()

    assert killer.errors == []
    assert killer.done == killer._kills
    assert all(uploads.values()), uploads
    return {name: uid for name, uid in uploads.items() if uid}


def check_outcome(
    samples: list[Sample],
    uploads: dict[str, str],
    warehouse: WarehouseClient,
    store: ObjectStore,
    settings: Settings,
    tenant: str,
) -> None:
    results = warehouse.wait_for_results(list(uploads.values()), timeout_s=900)
    assert len(results) == FILES, f"{FILES - len(results)} uploads have no result"

    # Exactly one terminal result row per upload.
    ids = ", ".join(f"'{u}'" for u in uploads.values())
    rows = warehouse.rows(
        "SELECT upload_id, count() AS n FROM sluice.file_results FINAL "
        f"WHERE upload_id IN ({ids}) GROUP BY upload_id"
    )
    assert len(rows) == FILES
    assert {int(r["n"]) for r in rows} == {1}

    clean_digests = set()
    for sample in samples:
        result = results[uploads[sample.name]]
        assert result["sha256"] == sample.sha256, sample.name
        if sample.infected:
            assert result["verdict"] == "INFECTED", sample.name
            assert result["location"] == f"quarantine/{tenant}/{result['upload_id']}"
        else:
            assert result["verdict"] == "CLEAN", (sample.name, result["reason"])
            assert store.digest(result["location"]).sha256 == sample.sha256
            clean_digests.add(sample.sha256)

    # Clean content, once per digest, is all there is under files/.
    stored = set()
    for shard in store.list_sizes(f"files/{tenant}/sha256"):
        stored |= set(store.list_sizes(f"files/{tenant}/sha256/{shard}"))
    assert stored == clean_digests
    assert store.list_sizes(f"staging/{tenant}") == {}

    letters = read_topic(settings, topics.DEAD_LETTER, "DeadLetter")
    assert [d for d in letters if d["tenant"] == tenant] == []


def test_worker_killed_five_times_mid_stream(
    tmp_path: Path,
    settings: Settings,
    auth: dict[str, str],
    warehouse: WarehouseClient,
    store: ObjectStore,
    tenant: str,
) -> None:
    rng = random.Random(20261204)
    samples = build_files(tmp_path, rng)
    killer = WorkerKiller(
        pid_of=lambda: stack_worker_pid(settings),
        restart=lambda: stack_script("stack.sh", "up"),
        kills=KILLS,
        rng=rng,
    )

    uploads = ingest_with_chaos(tmp_path, samples, settings, auth, killer)

    check_outcome(samples, uploads, warehouse, store, settings, tenant)


def test_two_workers_one_killed_mid_stream(
    tmp_path: Path,
    settings: Settings,
    auth: dict[str, str],
    warehouse: WarehouseClient,
    store: ObjectStore,
    tenant: str,
    second_worker: Callable[[], int],
) -> None:
    rng = random.Random(4122026)
    samples = build_files(tmp_path, rng)
    pids = [second_worker()]
    killer = WorkerKiller(
        pid_of=lambda: pids[-1],
        restart=lambda: pids.append(second_worker()),
        kills=2,
        rng=rng,
    )

    uploads = ingest_with_chaos(tmp_path, samples, settings, auth, killer)

    check_outcome(samples, uploads, warehouse, store, settings, tenant)
