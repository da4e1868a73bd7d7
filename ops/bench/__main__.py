"""Run the benchmarks against a stack started for them; print their figures."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = ("pipeline", "tokens", "warehouse_load", "gateway")


def bench_env() -> dict[str, str]:
    """The bench stack's settings, as test.sh derives them for a port base."""
    env = dict(
        os.environ,
        SLUICE_TEST_PORT_BASE=os.environ.get("SLUICE_BENCH_PORT_BASE", "25000"),
        SLUICE_TEST_HOME=str(REPO / ".sluice-bench"),
    )
    printed = subprocess.run(
        [str(REPO / "ops" / "scripts" / "test.sh"), "--env"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in printed.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value.strip('"')
    # The pipeline benchmark times clamd alone on the bytes the pipeline
    # scanned: clamd must not answer them from its clean-file cache.
    env["SLUICE_CLAMD_CACHE"] = "off"
    for name in (
        "SLUICE_POLICY_FILE",
        "SLUICE_ROUTES_FILE",
        "SLUICE_BULK_THRESHOLD_BYTES",
    ):
        env.pop(name, None)
    return env


def main(names: list[str]) -> int:
    env = bench_env()
    os.environ.update(env)
    stack = str(REPO / "ops" / "scripts" / "stack.sh")
    subprocess.run([stack, "up"], check=True)
    try:
        from streams.config import get_settings

        settings = get_settings()
        for name in names or BENCHMARKS:
            module = importlib.import_module(f"ops.bench.{name}")
            print(f"== {name}", flush=True)
            for line in module.run(settings):
                print(f"   {line}", flush=True)
    finally:
        subprocess.run([stack, "down"], check=False, capture_output=True)
        # Gigabytes of benchmark data go with the stack; Kafka's jars stay.
        home = Path(env["SLUICE_HOME"])
        for name in ("storage", "warehouse", "bench", "worker"):
            shutil.rmtree(home / name, ignore_errors=True)
        shutil.rmtree(home / "kafka" / "data", ignore_errors=True)
        (home / "kafka" / "cluster.id").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
