"""A 1 GiB CSV (the penguins rows repeated) loads with bounded memory.

Runs the warehouse's own load path in a fresh process, as ``make bench``
does, and bounds what the load adds: the peak resident set over the
process's resident set before the load, and the peak anonymous memory. The
process's absolute resident set is larger by ClickHouse's own code (chdb's
engine is a 550 MB library, about 200 MB of it resident once loaded), which
no load can shrink; see docs/warehouse.md.
"""

from __future__ import annotations

from pathlib import Path

from ops.bench.warehouse_load import TARGET_BYTES, _measure, generate_csv

BOUND_MB = 300


def test_a_1_gib_csv_loads_in_bounded_memory(tmp_path: Path) -> None:
    csv_path = tmp_path / "penguins_1gib.csv"
    rows, size = generate_csv(csv_path)
    assert size >= TARGET_BYTES
    try:
        figures = _measure("sluice", tmp_path, csv_path)
    finally:
        csv_path.unlink()

    print(figures)
    assert figures["rows"] == rows
    assert figures["peak_rss_mb"] - figures["baseline_rss_mb"] < BOUND_MB, figures
    assert figures["peak_anon_mb"] < BOUND_MB, figures
