"""Zip, tar and gzip, walked entry by entry within the inspection limits.

Each entry is decompressed in bounded chunks into a spool (memory up to
1 MiB, then a temporary file) while every byte is counted, and the spool is
then inspected like any other file, one layer deeper.

Zip expansion is checked twice: from the central directory's declared sizes
before anything is decompressed, and again by inflating stored and deflated
entries straight from their local data, so a header that understates a size
cannot hide a bomb. bzip2 and LZMA entries are read through ``zipfile``,
which stops at the declared size; a lying header there shows up as a CRC
failure (``archive-corrupt``).
"""

from __future__ import annotations

import gzip
import lzma
import posixpath
import re
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from types import TracebackType
from typing import IO, Protocol, cast

from streams.inspection._model import Code, InspectionLimits
from streams.inspection._sniff import ZIP_LOCAL, Source, ZipEnd

CHUNK_BYTES = 1024 * 1024
SPOOL_MEMORY_BYTES = 1024 * 1024
SYMLINK_TARGET_BYTES = 4096
# Central directory records are 46 bytes plus name, extra and comment; real
# archives average well under this, and zipfile holds them all in memory.
DIRECTORY_BYTES_PER_ENTRY = 1024
DIRECTORY_FLOOR_BYTES = 1024 * 1024
# tarfile reads a pax or GNU long-name header in one call of its full size.
TAR_HEADER_READ_BYTES = 1024 * 1024
ZIP_ENCRYPTED_FLAGS = 0x0001 | 0x0040  # traditional or AES, and strong

DRIVE_LETTER = re.compile(r"^[A-Za-z]:")

# Errors a malformed archive makes the standard library raise.
FORMAT_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    tarfile.TarError,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    ValueError,
    struct.error,
)


class Walk(Protocol):
    """What an archive walker needs from the inspection that runs it."""

    limits: InspectionLimits
    expanded: int
    entries: int

    def add(self, code: Code, detail: str, location: str) -> None:
        """Record a finding at a location inside the file."""

    def inspect_member(
        self, fileobj: IO[bytes], name: str, location: str, depth: int
    ) -> None:
        """Inspect an extracted member as a file of its own."""


class Bomb(Exception):
    """An expansion limit tripped; the message says which."""


class Corrupt(Exception):
    """The archive's bytes contradict its own structure."""


class Unsupported(Exception):
    """An entry uses a feature the walker cannot decode."""


class SpoolError(Exception):
    """The spool could not be written (disk full, no temporary directory)."""


class Spool:
    """A temporary home for one extracted member."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(
            max_size=SPOOL_MEMORY_BYTES
        )

    def write(self, data: bytes) -> None:
        """Append bytes, reporting a failure as SpoolError, not as corruption."""
        try:
            self.file.write(data)
        except OSError as exc:
            raise SpoolError(f"cannot spool an archive member: {exc}") from exc

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.file.close()


class Meter:
    """Counts what one archive expands to and trips on any limit."""

    def __init__(self, walk: Walk, archive_bytes: int) -> None:
        self.walk = walk
        self.archive_bytes = max(archive_bytes, 1)
        self.archive_out = 0
        self.entry_in = 1
        self.entry_out = 0

    def start(self, compressed: int) -> None:
        """Begin counting one entry stored in ``compressed`` bytes."""
        self.entry_in = max(compressed, 1)
        self.entry_out = 0

    def count(self, produced: int) -> None:
        """Add freshly decompressed bytes; raise Bomb past a limit."""
        limits = self.walk.limits
        self.entry_out += produced
        self.archive_out += produced
        self.walk.expanded += produced

        if self.walk.expanded > limits.max_expanded_bytes:
            raise Bomb(f"expands past {limits.max_expanded_bytes} bytes in all")
        if _over_ratio(self.entry_out, self.entry_in, limits):
            raise Bomb(
                f"expands {self.entry_in} bytes to over {self.entry_out}, "
                f"more than {limits.max_ratio:g}:1"
            )
        if _over_ratio(self.archive_out, self.archive_bytes, limits):
            raise Bomb(
                f"archive of {self.archive_bytes} bytes expands to over "
                f"{self.archive_out}, more than {limits.max_ratio:g}:1"
            )


def _over_ratio(expanded: int, compressed: int, limits: InspectionLimits) -> bool:
    allowed = limits.max_ratio * max(compressed, 1)
    return expanded > limits.ratio_floor_bytes and expanded > allowed


def join(location: str, name: str) -> str:
    """The location of a member inside the archive at ``location``."""
    return f"{location}!{name}" if location else name


def display(name: str, limit: int = 200) -> str:
    """Text made safe for logs: printable and bounded."""
    text = name if len(name) <= limit else name[:limit] + "..."
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def basename(name: str) -> str:
    """The last component of an archive path, whichever slash it uses."""
    return name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def escape_reason(name: str) -> str | None:
    """Why extracting an entry of this name would leave the target directory."""
    if "\x00" in name:
        return "a NUL byte in the name"
    normal = name.replace("\\", "/")
    slashes = " (written with backslashes)" if "\\" in name else ""
    if normal.startswith("/"):
        return f"an absolute path{slashes}"
    if DRIVE_LETTER.match(normal):
        return "a drive letter"
    if ".." in normal.split("/"):
        return f"a '..' component{slashes}"
    return None


def link_escape_reason(name: str, target: str, *, hard: bool) -> str | None:
    """Why a link entry would point outside the target directory."""
    normal = target.replace("\\", "/")
    if normal.startswith("/") or DRIVE_LETTER.match(normal):
        return f"a link to {display(target)}"
    # A symbolic link resolves from its own directory, a hard link from the root.
    base = "" if hard else posixpath.dirname(name.replace("\\", "/"))
    resolved = posixpath.normpath(posixpath.join(base, normal))
    if resolved == ".." or resolved.startswith("../"):
        return f"a link to {display(target)}"
    return None


# --- zip ------------------------------------------------------------------


def walk_zip(
    walk: Walk, src: Source, end: ZipEnd | None, location: str, depth: int
) -> None:
    """Check a zip's entries: names, encryption, expansion, then contents."""
    limits = walk.limits
    if end is None:
        walk.add(Code.ARCHIVE_CORRUPT, "no zip end record closes the file", location)
        return

    # Bound what zipfile will load into memory before it loads it.
    if walk.entries + end.entries > limits.max_entries:
        detail = f"{end.entries} entries, over the limit of {limits.max_entries}"
        walk.add(Code.ARCHIVE_BOMB, detail, location)
        return
    directory_cap = max(DIRECTORY_FLOOR_BYTES, end.entries * DIRECTORY_BYTES_PER_ENTRY)
    if end.directory_size > directory_cap:
        detail = f"central directory of {end.directory_size} bytes"
        walk.add(Code.ARCHIVE_BOMB, detail, location)
        return

    try:
        archive = zipfile.ZipFile(src.fileobj)
    except (*FORMAT_ERRORS, NotImplementedError) as exc:
        walk.add(Code.ARCHIVE_CORRUPT, f"zip cannot be opened: {exc}", location)
        return

    with archive:
        infos = archive.infolist()
        walk.entries += len(infos)
        meter = Meter(walk, src.size - end.prefix)
        try:
            if walk.entries > limits.max_entries:
                raise Bomb(f"more than {limits.max_entries} entries")
            _check_declared(walk, infos, meter.archive_bytes)
        except Bomb as exc:
            walk.add(Code.ARCHIVE_BOMB, str(exc), location)
            return

        for info in infos:
            here = join(location, display(info.orig_filename))
            try:
                _zip_entry(walk, src, archive, info, meter, here, depth)
            except Bomb as exc:
                walk.add(Code.ARCHIVE_BOMB, str(exc), here)
                return


def _check_declared(walk: Walk, infos: list[zipfile.ZipInfo], stored: int) -> None:
    limits = walk.limits
    declared = sum(info.file_size for info in infos)
    if walk.expanded + declared > limits.max_expanded_bytes:
        raise Bomb(
            f"headers declare {declared} expanded bytes, over the "
            f"{limits.max_expanded_bytes}-byte limit"
        )
    if _over_ratio(declared, stored, limits):
        raise Bomb(
            f"headers declare {declared} bytes from {stored}, "
            f"more than {limits.max_ratio:g}:1"
        )
    for info in infos:
        if _over_ratio(info.file_size, info.compress_size, limits):
            raise Bomb(
                f"{display(info.orig_filename)} declares {info.file_size} bytes "
                f"from {info.compress_size}, more than {limits.max_ratio:g}:1"
            )


def _zip_entry(
    walk: Walk,
    src: Source,
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    meter: Meter,
    here: str,
    depth: int,
) -> None:
    name = info.orig_filename
    reason = escape_reason(name)
    if reason is not None:
        walk.add(Code.ARCHIVE_PATH_ESCAPE, f"entry name has {reason}", here)
    if info.flag_bits & ZIP_ENCRYPTED_FLAGS:
        walk.add(Code.ARCHIVE_ENCRYPTED, "entry is encrypted", here)
        return
    if info.is_dir():
        return

    with Spool() as spool:
        meter.start(info.compress_size)
        try:
            _zip_payload(src, archive, info, meter, spool)
        except Unsupported as exc:
            walk.add(Code.INSPECTION_INCOMPLETE, str(exc), here)
            return
        except (*FORMAT_ERRORS, Corrupt) as exc:
            walk.add(Code.ARCHIVE_CORRUPT, f"entry cannot be read: {exc}", here)
            return

        if _is_zip_symlink(info):
            spool.file.seek(0)
            target = spool.file.read(SYMLINK_TARGET_BYTES).decode("utf-8", "replace")
            reason = link_escape_reason(name, target, hard=False)
            if reason is not None:
                walk.add(Code.ARCHIVE_PATH_ESCAPE, f"symlink is {reason}", here)
            return
        walk.inspect_member(spool.file, basename(name), here, depth + 1)


def _is_zip_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def _zip_payload(
    src: Source,
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    meter: Meter,
    spool: Spool,
) -> None:
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        _zip_payload_by_zipfile(archive, info, meter, spool)
        return

    raw = _zip_raw_chunks(src, info)
    chunks = raw if info.compress_type == zipfile.ZIP_STORED else _inflate(raw)
    crc = 0
    for chunk in chunks:
        meter.count(len(chunk))
        crc = zlib.crc32(chunk, crc)
        spool.write(chunk)

    # Expansion was measured from the data itself; now hold the header to it.
    if meter.entry_out != info.file_size:
        raise Corrupt(
            f"expands to {meter.entry_out} bytes, its header says {info.file_size}"
        )
    if crc != info.CRC:
        raise Corrupt("CRC-32 does not match the header")


def _zip_payload_by_zipfile(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, meter: Meter, spool: Spool
) -> None:
    try:
        handle = archive.open(info)
    except NotImplementedError as exc:
        raise Unsupported(f"entry cannot be decompressed: {exc}") from exc
    with handle:
        while chunk := handle.read(CHUNK_BYTES):
            meter.count(len(chunk))
            spool.write(chunk)


def _zip_raw_chunks(src: Source, info: zipfile.ZipInfo) -> Iterator[bytes]:
    header = src.read_at(info.header_offset, 30)
    if len(header) < 30 or header[:4] != ZIP_LOCAL:
        raise Corrupt("local header is missing")
    name_len, extra_len = struct.unpack_from("<2H", header, 26)
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
    expected = info.orig_filename.encode(encoding)
    # Tools that read local headers and tools that read the directory must
    # not see two different files.
    if src.read_at(info.header_offset + 30, name_len) != expected:
        raise Corrupt("local header names a different file")

    position = info.header_offset + 30 + name_len + extra_len
    end = position + info.compress_size
    if end > src.size:
        raise Corrupt("entry data runs past the end of the file")
    while position < end:
        chunk = src.read_at(position, min(CHUNK_BYTES, end - position))
        if not chunk:
            raise Corrupt("entry data is truncated")
        position += len(chunk)
        yield chunk


def _inflate(chunks: Iterator[bytes]) -> Iterator[bytes]:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    for chunk in chunks:
        data = chunk
        while data and not inflater.eof:
            out = inflater.decompress(data, CHUNK_BYTES)
            if out:
                yield out
            data = inflater.unconsumed_tail
        if inflater.eof:
            break
    # Output zlib still holds once the input has all gone in.
    while not inflater.eof:
        out = inflater.decompress(b"", CHUNK_BYTES)
        if not out:
            raise Corrupt("deflate data is truncated")
        yield out


# --- tar ------------------------------------------------------------------


class _CappedReads:
    """Refuses one read larger than a bound: tarfile reads a pax or GNU
    long-name header whole, at whatever size the header claims."""

    def __init__(self, fileobj: IO[bytes], cap: int) -> None:
        self._fileobj = fileobj
        self._cap = cap

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._cap:
            raise OSError(f"refusing a {size}-byte tar header read")
        return self._fileobj.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fileobj.seek(offset, whence)

    def tell(self) -> int:
        return self._fileobj.tell()


def walk_tar(walk: Walk, src: Source, location: str, depth: int) -> None:
    """Check a tar's members: names, links, sizes, then contents."""
    reader = cast(IO[bytes], _CappedReads(src.fileobj, TAR_HEADER_READ_BYTES))
    try:
        src.fileobj.seek(0)
        archive = tarfile.open(fileobj=reader, mode="r:")
    except FORMAT_ERRORS as exc:
        walk.add(Code.ARCHIVE_CORRUPT, f"tar cannot be opened: {exc}", location)
        return

    meter = Meter(walk, src.size)
    here = location
    with archive:
        try:
            for member in archive:
                here = join(location, display(member.name))
                walk.entries += 1
                if walk.entries > walk.limits.max_entries:
                    raise Bomb(f"more than {walk.limits.max_entries} entries")
                _tar_member(walk, archive, member, meter, here, depth)
            _check_tar_end(src, archive.offset)
        except Bomb as exc:
            walk.add(Code.ARCHIVE_BOMB, str(exc), here)
        except (*FORMAT_ERRORS, Corrupt) as exc:
            walk.add(Code.ARCHIVE_CORRUPT, f"tar cannot be read: {exc}", here)


def _tar_member(
    walk: Walk,
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    meter: Meter,
    here: str,
    depth: int,
) -> None:
    reason = escape_reason(member.name)
    if reason is not None:
        walk.add(Code.ARCHIVE_PATH_ESCAPE, f"member name has {reason}", here)
    if member.issym() or member.islnk():
        reason = link_escape_reason(member.name, member.linkname, hard=member.islnk())
        if reason is not None:
            kind = "hard link" if member.islnk() else "symlink"
            walk.add(Code.ARCHIVE_PATH_ESCAPE, f"{kind} is {reason}", here)
        return
    if not member.isreg():
        return

    limits = walk.limits
    if walk.expanded + member.size > limits.max_expanded_bytes:
        raise Bomb(
            f"member of {member.size} bytes passes the "
            f"{limits.max_expanded_bytes}-byte limit"
        )
    handle = archive.extractfile(member)
    if handle is None:
        return
    with Spool() as spool, handle:
        # Tar stores bytes as they are; only sparse members expand.
        meter.start(member.size)
        while chunk := handle.read(CHUNK_BYTES):
            meter.count(len(chunk))
            spool.write(chunk)
        if meter.entry_out != member.size:
            raise Corrupt(f"{display(member.name)} is truncated")
        walk.inspect_member(spool.file, basename(member.name), here, depth + 1)


def _check_tar_end(src: Source, offset: int) -> None:
    # tarfile stops quietly at the first bad header after the first member;
    # anything but zero padding past that point was never inspected.
    position = offset
    while position < src.size:
        chunk = src.read_at(position, CHUNK_BYTES)
        if not chunk:
            break
        if chunk.strip(b"\x00"):
            raise Corrupt("data follows the end of the tar archive")
        position += len(chunk)


# --- gzip -----------------------------------------------------------------


def gzip_stored_name(head: bytes) -> str | None:
    """The original file name a gzip header records (FNAME), if any."""
    if len(head) < 10 or not head[3] & 0x08:
        return None
    position = 10
    if head[3] & 0x04:  # FEXTRA comes first
        if len(head) < 12:
            return None
        (extra_len,) = struct.unpack_from("<H", head, 10)
        position = 12 + extra_len
    end = head.find(b"\x00", position)
    if end < 0:
        return None
    return head[position:end].decode("latin-1")


def member_name_for_gzip(filename: str) -> str:
    """What a gzip file's content is called once its suffix is dropped."""
    lower = filename.lower()
    if lower.endswith(".tgz"):
        return filename[:-4] + ".tar"
    if lower.endswith(".svgz"):
        return filename[:-1]
    if lower.endswith(".gz"):
        return filename[:-3]
    return filename


def walk_gzip(walk: Walk, src: Source, name: str, location: str, depth: int) -> None:
    """Decompress a gzip stream within the limits, then inspect its content."""
    stored = gzip_stored_name(src.head)
    if stored is not None:
        reason = escape_reason(stored)
        if reason is not None:
            detail = f"gzip header names {display(stored)}, which has {reason}"
            walk.add(Code.ARCHIVE_PATH_ESCAPE, detail, location)
    member = basename(stored) if stored else member_name_for_gzip(basename(name))
    here = join(location, display(member))

    walk.entries += 1
    meter = Meter(walk, src.size)
    meter.start(src.size)
    with Spool() as spool:
        try:
            src.fileobj.seek(0)
            with gzip.GzipFile(fileobj=src.fileobj, mode="rb") as stream:
                while chunk := stream.read(CHUNK_BYTES):
                    meter.count(len(chunk))
                    spool.write(chunk)
        except Bomb as exc:
            walk.add(Code.ARCHIVE_BOMB, str(exc), location)
            return
        except FORMAT_ERRORS as exc:
            walk.add(Code.ARCHIVE_CORRUPT, f"gzip cannot be read: {exc}", location)
            return
        walk.inspect_member(spool.file, member, here, depth + 1)
