"""The tus client behind ``sluice upload``: resumable, with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
                    metadata={"filename": path.name},
                    retries=3,
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
                    }
                )
            progress.update(task, completed=path.stat().st_size)
    return results
