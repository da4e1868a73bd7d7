"""Clients of the platform: the tus uploader behind ``sluice upload`` (resumable,
with a progress bar) and the warehouse's query API."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TransferSpeedColumn,
)
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError


def upload_files(
    paths: list[Path],
    *,
    gateway_url: str,
    headers: dict[str, str],
    chunk_size: int,
    show_progress: bool,
    metadata: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Upload each file; return one record per path with its upload id."""
    client = tus_client.TusClient(f"{gateway_url}/files", headers=headers)
    results: list[dict[str, Any]] = []
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        disable=not show_progress,
        transient=False,
    ) as progress:
        for path in paths:
            task = progress.add_task(path.name, total=path.stat().st_size)
            try:
                uploader = client.uploader(
                    str(path),
                    chunk_size=chunk_size,
                    metadata={**(metadata or {}), "filename": path.name},
                    # Enough to outlast a lease left by a killed gateway
                    # (423) and short outages (503): each retry HEADs first.
                    retries=10,
                    retry_delay=1,
                    upload_checksum=True,
                )
                # Create first, so an empty file still becomes an upload.
                uploader.set_url(uploader.create_url())
                uploader.offset = 0
                while uploader.offset < uploader.get_file_size():
                    uploader.upload_chunk()
                    progress.update(task, completed=uploader.offset)
                upload_id = (uploader.url or "").rstrip("/").rsplit("/", 1)[-1]
                results.append(
                    {
                        "path": str(path),
                        "upload_id": upload_id,
                        "size": path.stat().st_size,
                        "error": None,
                    }
                )
            except TusCommunicationError as exc:
                results.append(
                    {
                        "path": str(path),
                        "upload_id": None,
                        "size": path.stat().st_size,
                        "error": f"{exc.status_code}: {exc}",
                        "status": exc.status_code,
                    }
                )
            progress.update(task, completed=path.stat().st_size)
    return results


class WarehouseClient:
    """Read-only queries against the warehouse service, as the caller's token."""

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float = 60):
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def query(self, sql: str, fmt: str = "json") -> str:
        response = self._http.post("/v1/query", json={"sql": sql, "format": fmt})
        if response.status_code != 200:
            raise RuntimeError(
                f"query refused ({response.status_code}): {response.text}"
            )
        return response.text

    def rows(self, sql: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.query(sql).splitlines() if line]

    def results(self, upload_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Terminal results of these uploads that exist so far, by upload id."""
        if not upload_ids:
            return {}
        ids = ", ".join(f"'{u}'" for u in upload_ids if u.isalnum())
        rows = self.rows(
            f"SELECT * FROM sluice.file_results FINAL WHERE upload_id IN ({ids})"
        )
        return {row["upload_id"]: row for row in rows}

    def wait_for_results(
        self,
        upload_ids: list[str],
        *,
        timeout_s: float,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Poll until every upload has its result, or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            results = self.results(upload_ids)
            if on_progress is not None:
                on_progress(len(results), len(upload_ids))
            if len(results) == len(set(upload_ids)) or time.monotonic() > deadline:
                return results
            time.sleep(0.5)
