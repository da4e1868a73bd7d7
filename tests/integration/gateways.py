"""Extra gateway processes started by tests, on ports 23010-23029 by default.

Each runs the working tree's ``sluice gateway`` against the test stack's
Kafka with its own instance name (transactional ids differ per instance) and
whatever settings a test needs; tests stop what they start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

PORT_BASE = int(os.environ.get("SLUICE_TEST_EXTRA_GATEWAY_PORT", "23010"))


class GatewayProcess:
    """One extra gateway instance."""

    def __init__(self, slot: int, instance: str, **env: str) -> None:
        self.port = PORT_BASE + slot
        self.instance = instance
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "SLUICE_GATEWAY_LISTEN": f"127.0.0.1:{self.port}",
            "SLUICE_GATEWAY_URL": self.url,
            "SLUICE_GATEWAY_INSTANCE": instance,
            **env,
        }
        if "SLUICE_GATEWAY_TLS_CERT" in env:
            self.url = f"https://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        home = Path(os.environ.get("SLUICE_HOME", ".sluice"))
        self.log_path = home / "logs" / f"gateway-{instance}.log"

    def start(self, timeout_s: float = 60) -> GatewayProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "gateway"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway {self.instance} exited: {self.log_path}")
            try:
                # A self-signed test certificate: the probe only asks /healthz.
                probe = httpx.get(f"{self.url}/healthz", timeout=1, verify=False)  # noqa: S501
                if probe.is_success:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gateway {self.instance} did not start: {self.log_path}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, open transactions left behind."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]
