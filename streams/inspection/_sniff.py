"""Bounded reads of a file and what its magic bytes say it is.

Everything here looks at a fixed-size head, a fixed-size tail and a few
bytes at offsets the format itself names (a PE header, a zip central
directory); nothing reads a whole file.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import IO

HEAD_BYTES = 64 * 1024
# The zip end record is 22 bytes followed by a comment of at most 65,535.
EOCD_SIZE = 22
TAIL_BYTES = EOCD_SIZE + 0xFFFF
# PDF readers accept the header anywhere in the first KiB.
PDF_HEADER_WINDOW = 1024

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
GZIP_MAGIC = b"\x1f\x8b"
ZIP_LOCAL = b"PK\x03\x04"
ZIP_CENTRAL = b"PK\x01\x02"
ZIP_END = b"PK\x05\x06"
ZIP64_END = b"PK\x06\x06"
ZIP64_LOCATOR = b"PK\x06\x07"
# An empty archive is only an end record; a split one opens with a marker.
ZIP_HEADS = (ZIP_LOCAL, ZIP_END, b"PK\x07\x08")

MACHO_THIN = {
    b"\xfe\xed\xfa\xce": "Mach-O executable (32-bit, big-endian)",
    b"\xce\xfa\xed\xfe": "Mach-O executable (32-bit, little-endian)",
    b"\xfe\xed\xfa\xcf": "Mach-O executable (64-bit, big-endian)",
    b"\xcf\xfa\xed\xfe": "Mach-O executable (64-bit, little-endian)",
}
# magic -> (byte order of nfat_arch, size of one fat_arch record, label)
MACHO_FAT = {
    b"\xca\xfe\xba\xbe": (">", 20, "Mach-O universal binary"),
    b"\xbe\xba\xfe\xca": ("<", 20, "Mach-O universal binary (byte-swapped)"),
    b"\xca\xfe\xba\xbf": (">", 32, "Mach-O universal binary (64-bit)"),
    b"\xbf\xba\xfe\xca": ("<", 32, "Mach-O universal binary (64-bit, byte-swapped)"),
}
# 0xCAFEBABE also opens Java class files, whose next word is a version of 45
# or more; file(1) draws the line at 20 architectures the same way.
MAX_FAT_ARCHS = 20

SHEBANG = re.compile(rb"#![ \t]*/")
MARKUP_HEAD = re.compile(rb"<(?:svg|html|!doctype\s+html)[\s>/]", re.IGNORECASE)
PDF_VERSION = re.compile(rb"%PDF-\d\.\d")
PDF_TRAILER = re.compile(rb"%%EOF|startxref")


class Source:
    """A seekable binary file with its size, head and tail read once."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        self.fileobj = fileobj
        self.size = fileobj.seek(0, 2)
        self.head = self.read_at(0, HEAD_BYTES)
        self.tail_offset = max(0, self.size - TAIL_BYTES)
        self.tail = self.read_at(self.tail_offset, TAIL_BYTES)

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer at the end)."""
        if offset < 0 or offset >= self.size:
            return b""
        self.fileobj.seek(offset)
        return self.fileobj.read(length)


def executable_kind(source: Source) -> str | None:
    """Name the executable format the file starts with, if any."""
    head = source.head
    if head[:4] == b"\x7fELF" and head[4:5] in (b"\x01", b"\x02"):
        return "ELF executable"
    if head[:2] == b"MZ" and len(head) >= 64:
        (pe_offset,) = struct.unpack_from("<I", head, 0x3C)
        if source.read_at(pe_offset, 4) == b"PE\x00\x00":
            return "PE executable"
    if head[:4] in MACHO_THIN and len(head) >= 28:
        return MACHO_THIN[head[:4]]
    if head[:4] in MACHO_FAT and len(head) >= 8:
        order, arch_size, label = MACHO_FAT[head[:4]]
        (count,) = struct.unpack_from(order + "I", head, 4)
        if 0 < count < MAX_FAT_ARCHS and len(head) >= 8 + count * arch_size:
            return label
    if SHEBANG.match(head):
        interpreter = head[2:].split(b"\n", 1)[0].strip()[:64]
        return f"script with a shebang ({interpreter.decode('latin-1')})"
    return None


def is_ole(source: Source) -> bool:
    """Whether the file is an OLE compound document (legacy Office, MSI)."""
    return source.head.startswith(OLE_MAGIC)


def is_gzip(source: Source) -> bool:
    """Whether the file is a gzip stream (deflate, the only method defined)."""
    return source.head[:3] == GZIP_MAGIC + b"\x08"


def is_tar(source: Source) -> bool:
    """Whether the file opens with a POSIX or GNU tar header."""
    return source.head[257:262] == b"ustar"


def starts_as_zip(source: Source) -> bool:
    """Whether the file opens with a zip record."""
    return source.head[:4] in ZIP_HEADS


def pdf_header_offset(source: Source) -> int:
    """Offset of a PDF header in the first KiB, or -1."""
    match = PDF_VERSION.search(source.head, 0, PDF_HEADER_WINDOW + 8)
    return match.start() if match and match.start() < PDF_HEADER_WINDOW else -1


def has_pdf_trailer(source: Source) -> bool:
    """Whether the tail carries a PDF end marker or cross-reference pointer."""
    return PDF_TRAILER.search(source.tail) is not None


def looks_like_markup(source: Source) -> bool:
    """Whether the head reads as an SVG or HTML document."""
    return MARKUP_HEAD.search(source.head[:4096]) is not None


@dataclass(frozen=True, slots=True)
class ZipEnd:
    """Where a zip's central directory sits, as its end record tells."""

    entries: int
    directory_offset: int  # absolute, in this file
    directory_size: int
    prefix: int  # bytes before the archive's own offset 0


def find_zip_end(source: Source) -> ZipEnd | None:
    """Find a consistent zip end record that closes the file.

    The record and its comment must end exactly at end of file and point at a
    real central directory; a stray signature inside other data does not.
    """
    tail = source.tail
    position = len(tail)
    while True:
        position = tail.rfind(ZIP_END, 0, position)
        if position < 0:
            return None
        end = _parse_zip_end(source, tail, position)
        if end is not None:
            return end


def _parse_zip_end(source: Source, tail: bytes, position: int) -> ZipEnd | None:
    record = tail[position : position + EOCD_SIZE]
    if len(record) < EOCD_SIZE:
        return None
    fields = struct.unpack("<4s4H2IH", record)
    entries, size, offset, comment_len = fields[4], fields[5], fields[6], fields[7]
    absolute = source.tail_offset + position
    if absolute + EOCD_SIZE + comment_len != source.size:
        return None

    record_start = absolute
    if 0xFFFFFFFF in (size, offset) or entries == 0xFFFF:
        zip64 = _zip64_end(source, absolute)
        if zip64 is None:
            return None
        record_start, entries, size, offset = zip64

    directory = record_start - size
    prefix = directory - offset
    if directory < 0 or prefix < 0:
        return None
    if size == 0:
        return ZipEnd(entries, directory, size, prefix) if entries == 0 else None
    if source.read_at(directory, 4) != ZIP_CENTRAL:
        return None
    return ZipEnd(entries, directory, size, prefix)


def _zip64_end(source: Source, end_offset: int) -> tuple[int, int, int, int] | None:
    locator = source.read_at(end_offset - 20, 20)
    if len(locator) < 20 or locator[:4] != ZIP64_LOCATOR:
        return None
    # The locator's offset is relative to the archive, which may not start at
    # byte 0 of the file; writers put the record just before the locator.
    (located,) = struct.unpack_from("<Q", locator, 8)
    for record_start in (located, end_offset - 20 - 56):
        record = source.read_at(record_start, 56)
        if len(record) == 56 and record[:4] == ZIP64_END:
            entries, size, offset = struct.unpack_from("<3Q", record, 32)
            return record_start, entries, size, offset
    return None
