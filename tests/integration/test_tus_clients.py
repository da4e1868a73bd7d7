"""Real tus clients complete uploads byte-identically: tuspy and tus-js-client.

tus-js-client runs under Node.js from ops/clients/tus-js (installed by
ops/scripts/bootstrap.sh with npm ci from its lock file).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streams.config import Settings
from streams.storage import ObjectStore

from .conftest import REPO, stored_bytes

TUS_JS = REPO / "ops" / "clients" / "tus-js"


def _node_upload(
    settings: Settings, auth: dict[str, str], path: Path, *args: str
) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not (TUS_JS / "node_modules" / "tus-js-client").exists():
        if os.environ.get("SLUICE_REQUIRE_STACK"):
            pytest.fail("tus-js-client is not installed (ops/scripts/bootstrap.sh)")
        pytest.skip("waits for tus-js-client: run ops/scripts/bootstrap.sh")
    done = subprocess.run(
        [
            node,
            str(TUS_JS / "upload.mjs"),
            f"{settings.gateway_url}/files",
            auth["Authorization"].removeprefix("Bearer "),
            str(path),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    outcome: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return outcome


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((), id="single-request"),
        pytest.param(("--chunk-size", str(1024 * 1024)), id="chunked"),
        pytest.param(("--parallel", "4"), id="parallel-parts"),
        pytest.param(
            ("--chunk-size", str(1024 * 1024), "--interrupt-at", str(3 * 1024**2)),
            id="interrupted-then-resumed",
        ),
    ],
)
def test_tus_js_client_uploads_byte_identically(
    args: tuple[str, ...],
    tmp_path: Path,
    settings: Settings,
    auth: dict[str, str],
    store: ObjectStore,
    result_of: Callable[..., dict[str, Any]],
) -> None:
    data = os.urandom(8 * 1024 * 1024 + 1234)
    path = tmp_path / "from-node.bin"
    path.write_bytes(data)

    outcome = _node_upload(settings, auth, path, *args)

    if "--interrupt-at" in args:
        assert outcome["resumedFrom"] is not None
    result = result_of(outcome["url"].rsplit("/", 1)[-1])
    assert result["filename"] == "from-node.bin"
    assert stored_bytes(store, result) == data


def test_tuspy_uploads_with_checksums_byte_identically(
    tmp_path: Path,
    settings: Settings,
    auth: dict[str, str],
    store: ObjectStore,
    result_of: Callable[..., dict[str, Any]],
) -> None:
    from tusclient import client as tus_client

    data = os.urandom(5 * 1024 * 1024 + 17)
    path = tmp_path / "from-tuspy.bin"
    path.write_bytes(data)

    uploader = tus_client.TusClient(
        f"{settings.gateway_url}/files", headers=auth
    ).uploader(
        str(path),
        chunk_size=1024 * 1024,
        metadata={"filename": path.name},
        upload_checksum=True,
    )
    uploader.upload()

    result = result_of(str(uploader.url).rsplit("/", 1)[-1])
    assert stored_bytes(store, result) == data
