"""Loading a 1 GiB CSV into a dataset table: speed and memory.

The CSV is generated from real data: the Palmer penguins rows (PyPI
``palmerpenguins``) repeated with a row number until the file passes 1 GiB,
under ``$SLUICE_HOME/bench`` (deleted afterwards). It needs no stack: run
it alone with ``python -m ops.bench.warehouse_load``. Two fresh processes
load it, one after the other:

- **sluice**: the warehouse's own path (``streams.warehouse.datasets.load``
  on the embedded backend), exactly what the dataset loader runs;
- **chdb**: chdb's own ``INSERT INTO t SELECT * FROM file(...)`` of the same
  file into a table of the same types (the same inference and dialect),
  with chdb's default insert settings.

Reported: rows/s and MB/s of each, their ratio (sluice / chdb, measured in
this run; also the ratio of CPU seconds, steadier on a shared machine), and
each process's memory: resident set before the load, peak resident set
(VmHWM) and peak anonymous memory (sampled) over the load and the
background merges that follow it. ClickHouse's code is a 550 MB shared
library, about 200 MB of it resident once loaded, so a process's RSS starts
near 270 MB before it reads a byte; the growth over that baseline is the
load's own memory.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from streams.config import Settings

TARGET_BYTES = 1024**3
MERGE_SETTLE_S = 30.0
SAMPLE_S = 0.02


def generate_csv(path: Path, target: int = TARGET_BYTES) -> tuple[int, int]:
    """Write penguins rows with a row number until ``target`` bytes; (rows, bytes)."""
    from ops.demo.corpus import _locate_penguins_csv

    source, _ = _locate_penguins_csv()
    header, *rows = source.read_text(encoding="utf-8").splitlines()
    count = size = 0
    with path.open("w", encoding="utf-8", newline="\n") as out:
        first = f"row,{header}\n"
        out.write(first)
        size += len(first)
        while size < target:
            lines = []
            for row in rows * 200:
                count += 1
                lines.append(f"{count},{row}\n")
            block = "".join(lines)
            out.write(block)
            size += len(block)
    return count, size


def _memory() -> dict[str, int]:
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                fields[key] = int(value.split()[0]) // 1024
    return fields


class _Sampler:
    """Peak anonymous memory of this process, sampled in a thread."""

    def __init__(self) -> None:
        self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_anon = max(self.peak_anon, _memory()["RssAnon"])
            time.sleep(SAMPLE_S)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _settle(query: Any) -> None:
    """Wait for background merges to finish (they count towards the peak)."""
    deadline = time.monotonic() + MERGE_SETTLE_S
    while time.monotonic() < deadline:
        if not int(query("SELECT count() AS n FROM system.merges")[0]["n"]):
            return
        time.sleep(0.2)


def _child(kind: str, data_dir: Path, csv_path: Path) -> dict[str, Any]:
    from streams.warehouse import datasets
    from streams.warehouse.backend import ChdbBackend, quote
    from streams.warehouse.schema import migrate

    backend = ChdbBackend(data_dir)
    migrate(backend)
    baseline = _memory()["VmRSS"]
    cpu_started = _cpu_seconds()
    with _Sampler() as sampler:
        started = time.perf_counter()
        if kind == "sluice":
            record = datasets.load(
                backend,
                tenant="bench",
                dataset="penguins",
                upload_id="bench",
                filename=csv_path.name,
                path=csv_path,
            )
            rows = int(record["rows"])
        else:
            # The same types and dialect as the warehouse infers, so only
            # the way the rows travel differs.
            kind = datasets.kind_of(csv_path.name)
            dialect, columns = datasets.infer(
                backend, csv_path, datasets.sniff(csv_path, kind)
            )
            body = ", ".join(f"`{c.name}` {c.type}" for c in columns)
            backend.execute(
                f"CREATE TABLE datasets.plain ({body}) ENGINE = MergeTree "
                "ORDER BY tuple()"
            )
            backend.execute(
                "INSERT INTO datasets.plain SELECT * FROM "
                f"file({quote(str(csv_path))}, {quote(dialect.format)})",
                dialect.settings,
            )
            rows = int(
                backend.query_json("SELECT count() AS n FROM datasets.plain")[0]["n"]
            )
        seconds = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu_started
        _settle(backend.query_json)
    memory = _memory()
    backend.close()
    return {
        "rows": rows,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": memory["VmHWM"],
        "peak_anon_mb": sampler.peak_anon,
    }


def _measure(kind: str, work: Path, csv_path: Path) -> dict[str, Any]:
    data_dir = work / f"chdb-{kind}"
    shutil.rmtree(data_dir, ignore_errors=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.bench.warehouse_load",
            kind,
            str(data_dir),
            str(csv_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    shutil.rmtree(data_dir, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} load failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run(settings: Settings) -> list[str]:
    """Generate the CSV, load it both ways, report the figures, clean up."""
    work = settings.home / "bench"
    work.mkdir(parents=True, exist_ok=True)
    csv_path = work / "penguins_1gib.csv"
    try:
        started = time.perf_counter()
        rows, size = generate_csv(csv_path)
        lines = [
            f"csv: {rows:,} rows, {size / 1024**3:.2f} GiB "
            f"(generated in {time.perf_counter() - started:.1f} s)"
        ]
        figures = {kind: _measure(kind, work, csv_path) for kind in ("sluice", "chdb")}
    finally:
        csv_path.unlink(missing_ok=True)

    mb = size / 1e6
    for kind, f in figures.items():
        growth = f["peak_rss_mb"] - f["baseline_rss_mb"]
        lines.append(
            f"{kind:>6}: {f['rows'] / f['seconds']:>12,.0f} rows/s "
            f"{mb / f['seconds']:>7.1f} MB/s  {f['seconds']:6.1f} s "
            f"({f['cpu_seconds']:.1f} s cpu)  "
            f"rss {f['baseline_rss_mb']} -> peak {f['peak_rss_mb']} MB "
            f"(+{growth}), peak anon {f['peak_anon_mb']} MB"
        )
    ratio = figures["chdb"]["seconds"] / figures["sluice"]["seconds"]
    cpu_ratio = figures["chdb"]["cpu_seconds"] / figures["sluice"]["cpu_seconds"]
    lines.append(f"ratio sluice/chdb load rate: {ratio:.2f} (target >= 0.5)")
    # CPU time moves less than wall time when other work shares the machine.
    lines.append(f"ratio sluice/chdb cpu per row: {cpu_ratio:.2f}")
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 4:  # one measured load, in a process of its own
        print(json.dumps(_child(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))))
    else:
        from streams.config import get_settings

        for line in run(get_settings()):
            print(line, flush=True)
