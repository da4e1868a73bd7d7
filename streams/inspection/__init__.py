"""Deep file checks: what a file really holds, beyond its name and its type.

:func:`inspect_file` takes a local file, the name its producer declared and
the MIME type libmagic detected, and returns :class:`Finding` objects. It
needs no service: only the file, the standard library and oletools. A
:class:`Policy` turns findings into one :class:`Action` with :func:`decide`.

Finding codes (stable; each appears at most once per file, its detail
naming the first occurrence, with archive members written ``outer!inner``):

- ``executable-content``: an ELF, PE (``MZ`` with a ``PE`` header), Mach-O
  (thin, either byte order, 32 or 64 bit, or universal) or shebang script,
  or a type libmagic calls executable, under a name whose extension does not
  say executable.
- ``office-macros``: an OLE document, or an OLE part of an OOXML package
  (``vbaProject.bin``, under any name), holding a VBA project (olevba).
- ``pdf-javascript``: a PDF naming ``/JavaScript`` or ``/JS``, in its raw
  bytes or in a deflated stream, also written with ``#xx`` escapes
  (``/J#61vaScript``).
- ``pdf-launch-action``: a PDF naming ``/Launch``, found the same way.
- ``active-content``: SVG or HTML with a ``<script>`` element, an ``on*=``
  event handler (or an animation setting one), or a ``javascript:`` or
  ``vbscript:`` URL, also written with character references or tabs.
- ``archive-too-deep``: archives nested deeper than the depth limit.
- ``archive-bomb``: expansion past the ratio, the total size or the entry
  count limit, or a zip central directory too large for its entries.
- ``archive-encrypted``: an encrypted zip entry, which cannot be inspected.
- ``archive-path-escape``: an entry name that is absolute, has a drive
  letter, a ``..`` component (with ``/`` or ``\\``) or a NUL byte, a link
  pointing outside the extraction directory, or a gzip header naming such
  a path.
- ``archive-corrupt``: a zip, tar or gzip whose bytes contradict its
  structure: unreadable, truncated, a CRC or size mismatch, a local header
  naming another file, data after the end of a tar.
- ``polyglot``: a file that is validly two formats: a zip central directory
  closing a file that does not start as that zip (a PNG, JPEG or GIF with a
  zip appended, a self-extracting executable), or a PDF header in the first
  KiB of a file libmagic (or, inside an archive, the leading magic bytes)
  calls something else.
- ``type-mismatch``: libmagic's type is not one the extension allows (the
  table of ``agents/typecheck.py``).
- ``inspection-incomplete``: a check could not finish (the file could not be
  read, an OLE document is over the macro-check limit, a scan stopped at
  its byte limit, PDF streams inflate past the expansion limit, an entry
  uses an unsupported compression method, or a check failed); the file is
  not known to be clean.

Limits are :class:`InspectionLimits`, whose docstring gives each default.
An ``archive-bomb`` or ``archive-too-deep`` finding means that archive was
not walked further, so what lies beyond it was not inspected.

Memory stays bounded: heads and tails of at most 64 KiB, pattern scans in
1 MiB windows, archive entries decompressed in 1 MiB chunks into spools
(temporary files past 1 MiB; disk use is bounded by ``max_expanded_bytes``),
and only OLE documents, up to ``max_office_bytes``, are held whole.

Known limits of these checks:

- PDF names are matched in the raw bytes and in every stream whose data
  starts as zlib (``/FlateDecode`` first, which covers object streams,
  ``/ObjStm``), up to ``max_expanded_bytes`` inflated. Streams under other
  filters (``/ASCIIHexDecode``, ``/ASCII85Decode``, ``/LZWDecode``, or
  Flate behind one of those) are not decoded, so a name hidden in one is
  not seen; nor is anything past ``max_scan_bytes``. A string that merely
  mentions ``/JS`` is reported too: the scan does not parse objects.
- Markup is read as bytes in an ASCII-compatible encoding or as UTF-16 when
  the head says so; an obfuscated ``javascript:`` longer than 64 KiB that
  straddles a 1 MiB window boundary can be missed.
- Only zip, tar (POSIX or GNU, found by its ``ustar`` magic) and gzip are
  opened; 7z, RAR, cpio, bzip2, xz and pre-POSIX tar files are left to
  clamd. Excel 4 (XLM) macros are not looked for.
"""

from __future__ import annotations

from streams.inspection._inspect import DEFAULT_LIMITS, inspect_file
from streams.inspection._model import (
    DEFAULT_POLICY,
    Action,
    Code,
    Finding,
    InspectionLimits,
    Policy,
    decide,
)
from streams.inspection._types import (
    ALLOWED_TYPES,
    EXECUTABLE_EXTENSIONS,
    EXECUTABLE_TYPES,
    type_findings,
)

__all__ = [
    "ALLOWED_TYPES",
    "DEFAULT_LIMITS",
    "DEFAULT_POLICY",
    "EXECUTABLE_EXTENSIONS",
    "EXECUTABLE_TYPES",
    "Action",
    "Code",
    "Finding",
    "InspectionLimits",
    "Policy",
    "decide",
    "inspect_file",
    "type_findings",
]
