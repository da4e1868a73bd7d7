"""``make demo``: the whole path on a real corpus, end to end, checked.

Starts whatever part of the local stack is not running, builds the corpus
(``ops.demo.corpus``), uploads every file through the gateway with the tus
client, waits until each upload has its terminal result, prints a verdict
table and queries over the loaded data, checks every outcome against the
corpus manifest, and stops what it started. Exits 0 only when every check
holds:

* every infected file ends INFECTED or SUSPICIOUS, stored under quarantine/;
* every clean file ends CLEAN in its final place, byte-identical (sha256);
* ``sluice query`` over the results agrees with the table;
* each tabular file is a dataset table that ``sluice query`` reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ops.demo.corpus import CLEAN, build_corpus
from streams.auth import DevKeys
from streams.client import WarehouseClient, upload_files
from streams.config import get_settings
from streams.storage import ObjectStore

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "ops" / "scripts" / "stack.sh"
COMPONENTS = ("kafka", "clamd", "warehouse", "worker", "gateway")
TENANT = "demo"
RESULT_TIMEOUT_S = 300.0

console = Console()


def running_components() -> set[str]:
    """Which stack components are up now, from ``stack.sh status``."""
    status = subprocess.run(
        [str(STACK), "status"], capture_output=True, text=True, check=False
    )
    running = set()
    for line in status.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] in COMPONENTS and fields[1] == "running":
            running.add(fields[0])
    return running


def penguins_query(tenant: str) -> str:
    """The demo's question to the loaded penguins dataset (typed columns)."""
    return (
        "SELECT species, count() AS penguins, "
        "round(avg(body_mass_g)) AS mean_mass_g "
        f"FROM datasets.{tenant}__penguins GROUP BY species ORDER BY species"
    )


def sluice(*args: str, token: str) -> str:
    """Run the ``sluice`` command line as a user would, return its output."""
    env = dict(os.environ, SLUICE_TOKEN=token)
    command = [sys.executable, "-m", "streams.cli", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"sluice {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def check(
    manifest: list[dict[str, Any]],
    uploads: dict[str, str],
    results: dict[str, dict[str, Any]],
    store: ObjectStore,
) -> list[str]:
    """Every way the run differs from the manifest, as readable lines."""
    problems = []
    for entry in manifest:
        name = entry["name"]
        result = results.get(uploads.get(name, ""))
        if result is None:
            problems.append(f"{name}: no result")
            continue
        if entry["expected_verdict"] == CLEAN:
            if result["verdict"] != "CLEAN":
                problems.append(f"{name}: expected CLEAN, got {result['verdict']}")
                continue
            stored = store.digest(result["location"])
            if stored.sha256 != entry["sha256"]:
                problems.append(f"{name}: stored bytes differ from the upload")
        else:
            if result["verdict"] == "CLEAN":
                problems.append(f"{name}: infected file passed as CLEAN")
            if not result["location"].startswith("quarantine/"):
                problems.append(f"{name}: not in quarantine ({result['location']})")
            elif not store.exists(result["location"]):
                problems.append(f"{name}: quarantined object missing")
    return problems


def verdict_table(
    manifest: list[dict[str, Any]],
    uploads: dict[str, str],
    results: dict[str, dict[str, Any]],
) -> Table:
    table = Table("file", "size", "verdict", title="Sluice demo verdicts")
    table.add_column("reason", overflow="fold")
    for entry in manifest:
        result = results.get(uploads.get(entry["name"], ""), {})
        verdict = result.get("verdict", "-")
        style = "green" if verdict == "CLEAN" else "red"
        table.add_row(
            entry["name"],
            str(entry["size"]),
            f"[{style}]{verdict}[/]",
            result.get("reason", "no result"),
        )
    return table


def run(corpus_dir: Path) -> int:
    settings = get_settings()
    build_corpus(corpus_dir)
    manifest = json.loads((corpus_dir / "manifest.json").read_text())["files"]
    token = DevKeys.load_or_create(settings.keys_dir).issue(
        TENANT,
        ["uploader", "reader"],
        subject="demo",
        ttl_s=3600,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    headers = {"Authorization": f"Bearer {token}"}

    console.rule(f"uploading {len(manifest)} files through the gateway")
    started = time.monotonic()
    uploaded = upload_files(
        [corpus_dir / entry["name"] for entry in manifest],
        gateway_url=settings.gateway_url,
        headers=headers,
        chunk_size=4 * 1024 * 1024,
        show_progress=True,
    )
    failed = [u for u in uploaded if not u["upload_id"]]
    if failed:
        for item in failed:
            console.print(f"[red]upload failed: {item['path']}: {item['error']}")
        return 1
    uploads = {Path(u["path"]).name: u["upload_id"] for u in uploaded}

    console.rule("waiting for every upload's verdict")
    warehouse = WarehouseClient(f"http://{settings.warehouse_listen}", headers)
    try:
        results = warehouse.wait_for_results(
            list(uploads.values()), timeout_s=RESULT_TIMEOUT_S
        )
    finally:
        warehouse.close()
    elapsed = time.monotonic() - started
    console.print(verdict_table(manifest, uploads, results))
    console.print(f"{len(results)}/{len(uploads)} verdicts in {elapsed:.1f}s")

    ids = ", ".join(f"'{u}'" for u in uploads.values())
    console.rule("sluice query: verdicts of this run")
    by_verdict = sluice(
        "query",
        "SELECT verdict, count() AS files FROM sluice.file_results FINAL "
        f"WHERE upload_id IN ({ids}) GROUP BY verdict ORDER BY verdict",
        "--format",
        "json",
        token=token,
    )
    queried = {
        row["verdict"]: int(row["files"])
        for row in map(json.loads, by_verdict.splitlines())
    }
    tabled = Counter(r["verdict"] for r in results.values())
    console.print(queried)

    console.rule("sluice query: the penguins dataset")
    console.print(
        sluice(
            "query",
            penguins_query(TENANT),
            token=token,
        )
    )
    datasets = sorted({r["dataset"] for r in results.values() if r["dataset"]})
    console.print(
        sluice(
            "query",
            " UNION ALL ".join(
                f"SELECT '{name}' AS dataset, count() AS rows "
                f"FROM datasets.{TENANT}__{name}"
                for name in datasets
            ),
            token=token,
        )
    )

    problems = check(manifest, uploads, results, ObjectStore(settings.storage_root))
    if dict(tabled) != queried:
        problems.append(f"query disagrees with the table: {queried} vs {tabled}")
    if problems:
        console.rule("[red]demo failed")
        for line in problems:
            console.print(f"[red]- {line}")
        return 1
    clean = sum(e["expected_verdict"] == CLEAN for e in manifest)
    console.rule(
        f"[green]demo passed: {len(manifest) - clean} quarantined, "
        f"{clean} clean and byte-identical"
    )
    return 0


def main() -> int:
    settings = get_settings()
    before = running_components()
    subprocess.run([str(STACK), "up"], check=True)
    started = [c for c in COMPONENTS if c not in before]
    try:
        return run(settings.home / "demo" / "corpus")
    finally:
        if started:
            console.rule("stopping what the demo started")
            subprocess.run([str(STACK), "down", *started], check=False)


if __name__ == "__main__":
    raise SystemExit(main())
