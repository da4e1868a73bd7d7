"""Every deep-check finding, on a real sample, through the whole pipeline.

Each sample is built from its real format by the builders of the unit tests
(tests/test_inspection.py) and uploaded through the gateway; the result must
carry the expected finding code and the verdict the tenant's policy gives
(the test stack runs with tests/fixtures/policy.json).
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.client import WarehouseClient, upload_files
from streams.config import Settings
from tests.test_inspection import (
    MIB,
    ZipCrypto,
    hand_zip,
    nested_zip,
    ooxml,
    page_objects,
    pdf,
    png,
    vba_project,
    zip_of,
)

SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def encrypted_zip() -> bytes:
    plain = b"account,balance\n42,1000000\n"
    crc = zlib.crc32(plain)
    payload = ZipCrypto(b"hunter2").encrypt(os.urandom(11) + bytes([crc >> 24]) + plain)
    return hand_zip([("secret.csv", payload, 0, crc, len(plain), 0x1)])


def pdf_action(action: bytes) -> bytes:
    return pdf([*page_objects(b"/OpenAction 5 0 R "), action])


SAMPLES: dict[str, tuple[bytes, set[str]]] = {
    "export.csv": (Path("/bin/true").read_bytes(), {"executable-content"}),
    "report.docm": (ooxml("docm", vba_project()), {"office-macros"}),
    "form.pdf": (
        pdf_action(b"<< /Type /Action /S /JavaScript /JS (app.alert\\(1\\);) >>"),
        {"pdf-javascript"},
    ),
    "open-me.pdf": (
        pdf_action(b"<< /Type /Action /S /Launch /Win << /F (cmd.exe) >> >>"),
        {"pdf-launch-action"},
    ),
    "logo.svg": (SVG, {"active-content"}),
    "layers.zip": (nested_zip(10), {"archive-too-deep"}),
    "zeros.zip": (zip_of({"zeros.bin": bytes(20 * MIB)}), {"archive-bomb"}),
    "secret.zip": (encrypted_zip(), {"archive-encrypted"}),
    "escape.zip": (
        zip_of({"../../etc/cron.d/x": b"* * * * * id\n"}),
        {"archive-path-escape"},
    ),
    "cut.zip": (zip_of({"a.csv": b"a,b\n" * 100})[:-30], {"archive-corrupt"}),
    "cat.png": (png() + zip_of({"run.sh": b"#!/bin/sh\nid\n"}), {"polyglot"}),
    "statement.pdf": (png(), {"type-mismatch"}),
}


def _upload_as(
    tenant: str,
    files: dict[str, bytes],
    issue: Callable[..., str],
    settings: Settings,
    folder: Path,
) -> tuple[dict[str, str], WarehouseClient]:
    auth = {"Authorization": f"Bearer {issue(tenant)}"}
    folder.mkdir()
    paths = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    uploaded = upload_files(
        paths,
        gateway_url=settings.gateway_url,
        headers=auth,
        chunk_size=4 * MIB,
        show_progress=False,
    )
    ids = {Path(u["path"]).name: u["upload_id"] for u in uploaded}
    return ids, WarehouseClient(f"http://{settings.warehouse_listen}", auth)


def test_each_finding_is_quarantined_by_default(
    upload: Callable[[dict[str, bytes]], dict[str, str]],
    warehouse: WarehouseClient,
) -> None:
    uploads = upload({name: data for name, (data, _) in SAMPLES.items()})
    results = warehouse.wait_for_results(list(uploads.values()), timeout_s=120)

    for name, (_, expected) in SAMPLES.items():
        result = results[uploads[name]]
        assert expected <= set(result["findings"]), (name, result["findings"])
        # clamd itself flags the encrypted zip; every other sample is clean
        # to clamd and held by the deep checks.
        assert result["verdict"] == "SUSPICIOUS", (name, result["reason"])
        assert result["location"].startswith("quarantine/"), name


@pytest.mark.parametrize(
    ("tenant", "name", "verdict"),
    [
        ("policy-strict", "form.pdf", "REJECTED"),
        ("policy-strict", "report.docm", "REJECTED"),
        ("policy-lenient", "logo.svg", "CLEAN"),
        ("policy-lenient", "form.pdf", "SUSPICIOUS"),
    ],
)
def test_a_tenants_policy_decides_the_verdict(
    tenant: str,
    name: str,
    verdict: str,
    issue: Callable[..., str],
    settings: Settings,
    tmp_path: Path,
) -> None:
    data, expected = SAMPLES[name]
    # Unique bytes per run, so a rerun is not a duplicate of an earlier one.
    unique = data if name.endswith(".docm") else data + f"\n%{uuid.uuid4()}".encode()
    uploads, warehouse = _upload_as(
        tenant, {name: unique}, issue, settings, tmp_path / "files"
    )
    try:
        results = warehouse.wait_for_results(list(uploads.values()), timeout_s=60)
    finally:
        warehouse.close()

    result = results[uploads[name]]
    assert expected <= set(result["findings"])
    assert result["verdict"] == verdict, result["reason"]
    quarantined = verdict != "CLEAN"
    assert result["location"].startswith("quarantine/") == quarantined
