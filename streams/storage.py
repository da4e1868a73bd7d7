"""Object storage through fsspec, and the one place that names object keys.

Keys are deterministic, so writing the same object twice (an agent replaying
after a crash) overwrites it with the same bytes instead of creating a copy:

    staging/{tenant}/{upload_id}/assembling           local storage: the file so
                                                      far, chunks written in place
    staging/{tenant}/{upload_id}/parts/{offset:020d}  chunk bytes as received
                                                      (object stores, or a chunk
                                                      ahead of the bytes in place)
    staging/{tenant}/{upload_id}/conflict             marker: a chunk disagreed
                                                      with stored bytes; the
                                                      upload is refused
    staging/{tenant}/{upload_id}/assembled            the whole file, pre-scan
    files/{tenant}/sha256/{h[:2]}/{h}                 clean content, once per
                                                      tenant and digest
    quarantine/{tenant}/{upload_id}                   infected or suspicious
    routed/{tenant}/{upload_id}                       marker: the upload reached
                                                      its final place

Uploaders are never served anything under staging/ or quarantine/.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec

from streams.errors import IntegrityError, StorageUnavailable

COPY_BLOCK = 1024 * 1024


def part_key(tenant: str, upload_id: str, offset: int) -> str:
    return f"staging/{tenant}/{upload_id}/parts/{offset:020d}"


def parts_prefix(tenant: str, upload_id: str) -> str:
    return f"staging/{tenant}/{upload_id}/parts"


def staging_prefix(tenant: str, upload_id: str) -> str:
    return f"staging/{tenant}/{upload_id}"


def assembling_key(tenant: str, upload_id: str) -> str:
    return f"staging/{tenant}/{upload_id}/assembling"


def conflict_key(tenant: str, upload_id: str) -> str:
    return f"staging/{tenant}/{upload_id}/conflict"


def assembled_key(tenant: str, upload_id: str) -> str:
    return f"staging/{tenant}/{upload_id}/assembled"


def content_key(tenant: str, sha256: str) -> str:
    return f"files/{tenant}/sha256/{sha256[:2]}/{sha256}"


def quarantine_key(tenant: str, upload_id: str) -> str:
    return f"quarantine/{tenant}/{upload_id}"


def routed_key(tenant: str, upload_id: str) -> str:
    return f"routed/{tenant}/{upload_id}"


def _modified(entry: dict[str, Any]) -> float:
    """Modification time of an fsspec listing entry (local or S3)."""
    if "mtime" in entry:
        return float(entry["mtime"])
    last = entry.get("LastModified")
    return float(last.timestamp()) if last is not None else 0.0


def _durable_replace(src: str, dst: str) -> None:
    """Rename src over dst and fsync the directories, so the name survives a crash."""
    os.replace(src, dst)
    for directory in {os.path.dirname(src), os.path.dirname(dst)}:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Digest:
    size: int
    sha256: str


class ObjectStore:
    """Keys relative to one fsspec root (a local directory, s3://bucket, ...)."""

    def __init__(self, root_url: str, **options: Any) -> None:
        self._fs, root = fsspec.core.url_to_fs(root_url, **options)
        self._root = root.rstrip("/")
        self._local = self._fs.protocol in ("file", "local") or (
            isinstance(self._fs.protocol, tuple) and "file" in self._fs.protocol
        )

    def path(self, key: str) -> str:
        return f"{self._root}/{key}"

    def put(self, key: str, data: bytes) -> None:
        """Write a whole object; on local storage it appears complete or not at all.

        Local objects are on disk when this returns (file and directory
        fsynced): markers and parts must survive what Kafka's committed
        offsets survive.
        """
        path = self.path(key)
        try:
            if self._local:
                os.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                tmp = f"{path}.partial"
                with open(tmp, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                _durable_replace(tmp, path)
                return
            self._fs.pipe_file(path, data)
        except OSError as exc:
            raise StorageUnavailable(f"cannot write {key}: {exc}") from exc

    @property
    def in_place(self) -> bool:
        """Whether objects can be written at an offset (local storage)."""
        return self._local

    def write_at(self, key: str, offset: int, data: bytes) -> int | None:
        """Write data at offset into a local file that holds [0, offset) already.

        Returns the file's size before the write, or None, writing nothing,
        when the file is shorter than offset: the file only ever holds a
        gapless prefix. Bytes already in place must equal data where the
        two overlap (a replayed chunk); otherwise IntegrityError, and
        nothing is written.
        """
        path = self.path(key)
        try:
            os.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
            try:
                size = os.fstat(fd).st_size
                if offset > size:
                    return None
                present = os.pread(fd, min(len(data), size - offset), offset)
                if present != data[: len(present)]:
                    raise IntegrityError("chunk differs from the bytes stored there")
                view = memoryview(data)[len(present) :]
                position = offset + len(present)
                while view:
                    written = os.pwrite(fd, view, position)
                    view, position = view[written:], position + written
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageUnavailable(f"cannot write {key}: {exc}") from exc
        return size

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Up to length bytes of an object from offset."""
        try:
            with self._fs.open(self.path(key), "rb") as handle:
                handle.seek(offset)
                return bytes(handle.read(length))
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {key}: {exc}") from exc

    def sync(self, key: str) -> None:
        """Flush a local object's bytes to disk (fsync); nothing elsewhere."""
        if not self._local:
            return
        try:
            fd = os.open(self.path(key), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageUnavailable(f"cannot sync {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        try:
            return bool(self._fs.exists(self.path(key)))
        except OSError as exc:
            raise StorageUnavailable(f"cannot stat {key}: {exc}") from exc

    def size(self, key: str) -> int:
        try:
            return int(self._fs.size(self.path(key)))
        except OSError as exc:
            raise StorageUnavailable(f"cannot stat {key}: {exc}") from exc

    def list_sizes(self, prefix: str) -> dict[str, int]:
        """Object name (last path segment) to size, for every object under prefix."""
        try:
            entries = self._fs.ls(self.path(prefix), detail=True)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StorageUnavailable(f"cannot list {prefix}: {exc}") from exc
        return {e["name"].rsplit("/", 1)[-1]: int(e["size"]) for e in entries}

    def newest_change(self, prefix: str) -> float | None:
        """Epoch seconds of the latest write under prefix (None: nothing there)."""
        try:
            found = self._fs.find(self.path(prefix), detail=True)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageUnavailable(f"cannot list {prefix}: {exc}") from exc
        times = [_modified(entry) for entry in found.values()]
        return max(times) if times else None

    def read_blocks(self, key: str, block: int = COPY_BLOCK) -> Iterator[bytes]:
        """Stream an object in bounded blocks."""
        try:
            with self._fs.open(self.path(key), "rb") as handle:
                while chunk := handle.read(block):
                    yield chunk
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {key}: {exc}") from exc

    def read_head(self, key: str, length: int) -> bytes:
        return self.read_range(key, 0, length)

    def write_stream(self, key: str, blocks: Iterator[bytes]) -> Digest:
        """Write blocks to key through a temporary name; return size and sha256.

        The object appears under its final key only once complete and on
        disk, so a crash mid-write never leaves a truncated file where a
        whole one is expected.
        """
        path = self.path(key)
        tmp = f"{path}.partial"
        digest = hashlib.sha256()
        size = 0
        try:
            if self._local:
                self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with self._fs.open(tmp, "wb") as out:
                for block in blocks:
                    digest.update(block)
                    size += len(block)
                    out.write(block)
            if self._local:
                self.sync(f"{key}.partial")
                _durable_replace(tmp, path)
            else:
                self._fs.mv(tmp, path)
        except OSError as exc:
            raise StorageUnavailable(f"cannot write {key}: {exc}") from exc
        return Digest(size=size, sha256=digest.hexdigest())

    def rename(self, src: str, dst: str) -> bool:
        """Move an object without copying it, where storage allows (local).

        Returns False, changing nothing, where it cannot (object stores).
        """
        if not self._local:
            return False
        target = self.path(dst)
        try:
            self._fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            _durable_replace(self.path(src), target)
        except OSError as exc:
            raise StorageUnavailable(f"cannot move {src}: {exc}") from exc
        return True

    def copy(self, src: str, dst: str) -> Digest:
        return self.write_stream(dst, self.read_blocks(src))

    def digest(self, key: str) -> Digest:
        digest = hashlib.sha256()
        size = 0
        for block in self.read_blocks(key):
            digest.update(block)
            size += len(block)
        return Digest(size=size, sha256=digest.hexdigest())

    def delete_prefix(self, prefix: str) -> None:
        try:
            if self._fs.exists(self.path(prefix)):
                self._fs.rm(self.path(prefix), recursive=True)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageUnavailable(f"cannot delete {prefix}: {exc}") from exc

    def local_path(self, key: str) -> str | None:
        """A filesystem path for the object when storage is local, else None."""
        return self.path(key) if self._local else None
