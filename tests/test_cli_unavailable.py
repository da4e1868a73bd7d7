"""A command whose dependency is down says which, without a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def test_topics_apply_with_kafka_unreachable(tmp_path: Path) -> None:
    # A bound port nobody listens on: connections to it are refused.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        env = {
            **os.environ,
            "SLUICE_HOME": str(tmp_path),
            "SLUICE_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
        }
        cli = [sys.executable, "-m", "streams.cli"]
        token = subprocess.run(
            [*cli, "token", "--tenant", "acme", "--role", "operator"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        done = subprocess.run(
            [*cli, "topics", "apply"],
            env={**env, "SLUICE_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 69, done.stderr
    assert "sluice: cannot list topics" in done.stderr
    assert "Traceback" not in done.stderr
