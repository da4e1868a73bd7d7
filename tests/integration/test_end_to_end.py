"""The whole path on the real corpus: gateway, Kafka, agents, storage, warehouse."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ops.demo.corpus import CLAMAV_TESTFILES_COUNT, CLEAN, INFECTED, build_corpus
from ops.demo.run import check, penguins_query
from streams.client import WarehouseClient
from streams.config import Settings
from streams.storage import ObjectStore


def test_corpus_verdicts_storage_and_datasets(
    tmp_path: Path,
    upload: Callable[[dict[str, bytes]], dict[str, str]],
    warehouse: WarehouseClient,
    store: ObjectStore,
    tenant: str,
    auth: dict[str, str],
    settings: Settings,
) -> None:
    build_corpus(tmp_path / "corpus")
    manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text())
    entries = manifest["files"]
    infected = [e for e in entries if e["expected_verdict"] == INFECTED]
    assert len(infected) == CLAMAV_TESTFILES_COUNT + 4  # + EICAR variants

    uploads = upload(
        {e["name"]: (tmp_path / "corpus" / e["name"]).read_bytes() for e in entries}
    )
    results = warehouse.wait_for_results(list(uploads.values()), timeout_s=240)

    # Every infected file quarantined, every clean file clean and identical.
    assert check(entries, uploads, results, store) == []
    for entry in entries:
        result = results[uploads[entry["name"]]]
        assert result["tenant"] == tenant
        assert result["sha256"] == entry["sha256"]
        if entry["expected_verdict"] == CLEAN:
            assert result["location"].startswith(f"files/{tenant}/")
        else:
            assert result["verdict"] == "INFECTED"
            assert result["location"] == f"quarantine/{tenant}/{result['upload_id']}"
    # Staging is cleaned once every file is routed.
    assert store.list_sizes(f"staging/{tenant}") == {}

    # `sluice query` agrees with the results, and reads the datasets.
    ids = ", ".join(f"'{u}'" for u in uploads.values())
    env = {"SLUICE_TOKEN": auth["Authorization"].removeprefix("Bearer ")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "query",
            f"SELECT verdict, count() AS n FROM sluice.file_results FINAL "
            f"WHERE upload_id IN ({ids}) GROUP BY verdict",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    queried = {r["verdict"]: int(r["n"]) for r in map(json.loads, done.stdout.split())}
    assert queried == dict(Counter(r["verdict"] for r in results.values()))
    assert queried == {"INFECTED": len(infected), "CLEAN": len(entries) - len(infected)}

    for table in ("penguins", "penguins_jsonl", "penguins_parquet"):
        rows = warehouse.rows(
            f"SELECT count() AS n, uniqExact(_upload_id) AS uploads "
            f"FROM datasets.{tenant}__{table}"
        )
        # ClickHouse quotes 64-bit integers in JSON output.
        assert [(int(r["n"]), int(r["uploads"])) for r in rows] == [(344, 1)]

    # The demo's own query over the dataset, checked against the CSV itself.
    counts: Counter[str] = Counter()
    masses: dict[str, list[float]] = {}
    with (tmp_path / "corpus" / "penguins.csv").open(newline="") as source:
        for record in csv.DictReader(source):
            counts[record["species"]] += 1
            if record["body_mass_g"] not in ("", "NA"):
                masses.setdefault(record["species"], []).append(
                    float(record["body_mass_g"])
                )
    expected = [
        (name, counts[name], round(sum(values) / len(values)))
        for name, values in sorted(masses.items())
    ]
    rows = warehouse.rows(penguins_query(tenant))
    assert [
        (r["species"], int(r["penguins"]), round(float(r["mean_mass_g"]))) for r in rows
    ] == expected


def test_status_command_reports_the_verdict(
    upload: Callable[[dict[str, bytes]], dict[str, str]],
    warehouse: WarehouseClient,
    auth: dict[str, str],
) -> None:
    eicar = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    upload_id = upload({"eicar.txt": eicar})["eicar.txt"]
    warehouse.wait_for_results([upload_id], timeout_s=60)

    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "status", upload_id, "--json"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "SLUICE_TOKEN": auth["Authorization"].removeprefix("Bearer "),
        },
        check=True,
    )
    status = json.loads(done.stdout)
    assert status["stage"] == "ROUTED"
    assert status["result"]["verdict"] == "INFECTED"
    assert status["result"]["signature"].startswith("Sluice.Test.EICAR")
    assert status["result"]["location"].startswith("quarantine/")
