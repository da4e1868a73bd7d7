"""The inspection of one file: which checks apply, run in a fixed order."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

from streams.inspection import _sniff
from streams.inspection._archives import (
    SpoolError,
    display,
    walk_gzip,
    walk_tar,
    walk_zip,
)
from streams.inspection._content import markup_encoding, scan_markup, scan_pdf
from streams.inspection._model import Code, Finding, InspectionLimits
from streams.inspection._office import office_findings
from streams.inspection._sniff import Source
from streams.inspection._types import extension, says_executable, type_findings

PDF_TYPES = frozenset({"application/pdf", "application/x-pdf"})
MARKUP_TYPES = frozenset({"image/svg+xml", "text/html", "application/xhtml+xml"})
MARKUP_EXTENSIONS = frozenset({"svg", "html", "htm", "xhtml", "xht", "shtml"})

LEADING_FORMATS = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"%PDF-", "PDF document"),
    (b"PK\x03\x04", "zip archive"),
    (b"\x1f\x8b", "gzip stream"),
    (_sniff.OLE_MAGIC, "OLE document"),
    (b"\x7fELF", "ELF executable"),
    (b"MZ", "DOS/PE executable"),
    (b"RIFF", "RIFF media"),
    (b"\x00\x00\x01\x00", "Windows icon"),
)

DEFAULT_LIMITS = InspectionLimits()
DETAIL_CHARS = 1000


def inspect_file(
    path: str | os.PathLike[str],
    filename: str,
    mime: str | None,
    limits: InspectionLimits = DEFAULT_LIMITS,
) -> list[Finding]:
    """Run every deep check on a local file; each code appears at most once.

    ``filename`` is the name the producer declared and ``mime`` the type
    libmagic detected (``None`` if it was not run). An unreadable file is
    ``inspection-incomplete``, never clean.
    """
    inspection = Inspection(limits)
    try:
        with open(path, "rb") as fileobj:
            inspection.inspect(fileobj, filename, mime, location="", depth=0)
    except (OSError, SpoolError) as exc:
        inspection.add(Code.INSPECTION_INCOMPLETE, f"file cannot be read: {exc}", "")
    return inspection.findings()


class Inspection:
    """State shared by every layer of one file: limits, budget, findings."""

    def __init__(self, limits: InspectionLimits) -> None:
        self.limits = limits
        self.expanded = 0
        self.entries = 0
        self._found: dict[Code, Finding] = {}

    def findings(self) -> list[Finding]:
        """What was found, first occurrence of each code, in finding order."""
        return list(self._found.values())

    def add(self, code: Code, detail: str, location: str) -> None:
        """Record a finding unless its code is already recorded."""
        if code not in self._found:
            # Details carry names and bytes from the file; keep logs sane.
            text = f"{location}: {detail}" if location else detail
            self._found[code] = Finding(code, display(text, DETAIL_CHARS))

    def _extend(self, findings: list[Finding], location: str) -> None:
        for finding in findings:
            self.add(finding.code, finding.detail, location)

    def inspect_member(
        self, fileobj: IO[bytes], name: str, location: str, depth: int
    ) -> None:
        """Inspect an extracted archive member; libmagic has not seen it."""
        self.inspect(fileobj, name, None, location=location, depth=depth)

    def inspect(
        self,
        fileobj: IO[bytes],
        name: str,
        mime: str | None,
        *,
        location: str,
        depth: int,
    ) -> None:
        """Run each check that applies to one file or member."""
        src = Source(fileobj)
        zip_end = None
        with self._guard("type check", location):
            self._check_type(src, name, mime, location)
        with self._guard("polyglot check", location):
            zip_end = _sniff.find_zip_end(src)
            self._check_polyglot(src, mime, zip_end, location)

        limits = self.limits
        pdf_at = _sniff.pdf_header_offset(src)
        if pdf_at >= 0 or mime in PDF_TYPES:
            with self._guard("PDF scan", location):
                found = scan_pdf(
                    fileobj,
                    src.size,
                    limits.max_scan_bytes,
                    limits.max_expanded_bytes,
                )
                self._extend(found, location)
        if self._is_markup(src, name, mime):
            with self._guard("markup scan", location):
                encoding = markup_encoding(src.head)
                found = scan_markup(fileobj, src.size, limits.max_scan_bytes, encoding)
                self._extend(found, location)
        if _sniff.is_ole(src):
            with self._guard("macro check", location):
                found = office_findings(
                    fileobj, src.size, name, limits.max_office_bytes
                )
                self._extend(found, location)

        walker = self._archive_walker(src, name, zip_end, location, depth)
        if walker is None:
            return
        if depth + 1 > limits.max_depth:
            detail = f"archive nested deeper than {limits.max_depth} layers"
            self.add(Code.ARCHIVE_TOO_DEEP, detail, location)
            return
        with self._guard("archive walk", location):
            walker()

    def _check_type(
        self, src: Source, name: str, mime: str | None, location: str
    ) -> None:
        if mime is not None:
            self._extend(type_findings(name, mime), location)
        kind = _sniff.executable_kind(src)
        if kind is not None and not says_executable(name):
            self.add(Code.EXECUTABLE_CONTENT, kind, location)

    def _check_polyglot(
        self,
        src: Source,
        mime: str | None,
        zip_end: _sniff.ZipEnd | None,
        location: str,
    ) -> None:
        leading = _leading_format(src.head)
        if zip_end is not None:
            if not _sniff.starts_as_zip(src):
                detail = f"{leading or 'data'} with a zip archive appended"
                self.add(Code.POLYGLOT, detail, location)
            elif zip_end.prefix > 0:
                detail = "zip archive with a second zip archive appended"
                self.add(Code.POLYGLOT, detail, location)

        pdf_at = _sniff.pdf_header_offset(src)
        if pdf_at < 0 or not _sniff.has_pdf_trailer(src):
            return
        # libmagic names the first format it recognises; a PDF reader looks
        # for its header anywhere in the first KiB.
        if mime is not None and mime not in PDF_TYPES:
            detail = f"PDF document inside a file libmagic reads as {mime}"
            self.add(Code.POLYGLOT, detail, location)
        elif pdf_at > 0 and leading not in (None, "PDF document"):
            detail = f"PDF document inside a {leading}"
            self.add(Code.POLYGLOT, detail, location)

    def _is_markup(self, src: Source, name: str, mime: str | None) -> bool:
        return (
            mime in MARKUP_TYPES
            or extension(name) in MARKUP_EXTENSIONS
            or _sniff.looks_like_markup(src)
        )

    def _archive_walker(
        self,
        src: Source,
        name: str,
        zip_end: _sniff.ZipEnd | None,
        location: str,
        depth: int,
    ) -> Callable[[], None] | None:
        if _sniff.starts_as_zip(src) or zip_end is not None:
            return lambda: walk_zip(self, src, zip_end, location, depth)
        if _sniff.is_gzip(src):
            return lambda: walk_gzip(self, src, name, location, depth)
        if _sniff.is_tar(src):
            return lambda: walk_tar(self, src, location, depth)
        return None

    @contextmanager
    def _guard(self, check: str, location: str) -> Iterator[None]:
        # A check that fails leaves the file unproven, never clean. Spool
        # failures belong to the whole inspection and go up.
        try:
            yield
        except SpoolError:
            raise
        except Exception as exc:  # any failure of a check must fail closed
            detail = f"{check} failed: {type(exc).__name__}: {exc}"
            self.add(Code.INSPECTION_INCOMPLETE, detail, location)


def _leading_format(head: bytes) -> str | None:
    for magic, label in LEADING_FORMATS:
        if head.startswith(magic):
            return label
    return None
