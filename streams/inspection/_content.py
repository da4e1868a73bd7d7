"""Pattern scans of PDF and markup content, in bounded, overlapping windows.

The file is read in 1 MiB chunks and each window keeps the tail of the one
before, so a pattern cut by a chunk boundary is still seen whole; a match
that touches the end of a window is left for the next one, which sees it
with what follows.

PDF streams whose data opens with a zlib header are inflated in bounded
chunks and scanned the same way, so a name inside a deflated object stream
is still found.
"""

from __future__ import annotations

import codecs
import re
import zlib
from collections.abc import Iterable, Iterator
from typing import IO

from streams.inspection._model import Code, Finding

CHUNK_BYTES = 1024 * 1024

# A PDF name is a slash and regular characters, any of them written as #xx.
# Names longer than the overlap cannot be one of the names sought here.
PDF_NAME = re.compile(r"/((?:[^\x00\t\n\f\r /%()<>\[\]{}#]|#[0-9A-Fa-f]{2})+)")
PDF_HEX_ESCAPE = re.compile(r"#([0-9A-Fa-f]{2})")
PDF_OVERLAP = 256
# "stream" and its end of line open a stream's data; "endstream" does not.
PDF_STREAM = re.compile(r"(?<!end)stream(?:\r\n|\n|\r)")
INFLATE_READ_BYTES = 64 * 1024
PDF_NAMES = {
    "JavaScript": Code.PDF_JAVASCRIPT,
    "JS": Code.PDF_JAVASCRIPT,
    "Launch": Code.PDF_LAUNCH_ACTION,
}

MARKUP_OVERLAP = 64 * 1024


def _url_scheme(word: str) -> str:
    """A pattern for a URL scheme as browsers read it.

    Browsers drop tabs, newlines and NULs inside a URL and decode character
    references in attribute values, so ``jav&#x61;\\tscript:`` still runs.
    """
    noise = r"(?:[\t\n\r\x00]|&#0*(?:9|10|13);?|&#x0*(?:9|a|d);?|&tab;|&newline;)*"
    letters = []
    for char in word:
        codes = {ord(char.lower()), ord(char.upper())}
        decimal = "|".join(str(code) for code in sorted(codes))
        hexadecimal = "|".join(f"{code:x}" for code in sorted(codes))
        letters.append(f"(?:{char}|&#0*(?:{decimal});?|&#x0*(?:{hexadecimal});?)")
    colon = r"(?::|&#0*58;?|&#x0*3a;?|&colon;)"
    return noise.join(letters) + noise + colon


MARKUP_PATTERNS = (
    (re.compile(r"<(?:[\w-]+:)?script[\s>/]", re.IGNORECASE), "<script> element"),
    (
        re.compile(r"""[\s/"'](on[a-z]+)\s*=""", re.IGNORECASE),
        "event handler attribute",
    ),
    (
        re.compile(r"""attributeName\s*=\s*["']?\s*on[a-z]+""", re.IGNORECASE),
        "animation that sets an event handler",
    ),
    (re.compile(_url_scheme("javascript"), re.IGNORECASE), "javascript: URL"),
    (re.compile(_url_scheme("vbscript"), re.IGNORECASE), "vbscript: URL"),
)


def file_chunks(fileobj: IO[bytes], limit: int) -> Iterator[bytes]:
    """The file's first ``limit`` bytes in chunks, seeking before each read.

    Seeking each time lets other readers use the same file in between.
    """
    position = 0
    while position < limit:
        fileobj.seek(position)
        chunk = fileobj.read(min(CHUNK_BYTES, limit - position))
        if not chunk:
            return
        position += len(chunk)
        yield chunk


def text_windows(
    chunks: Iterable[bytes], *, overlap: int, encoding: str = "latin-1"
) -> Iterator[tuple[str, int, bool]]:
    """Yield (window, offset of its first character, last) over the chunks.

    Latin-1 keeps one character per byte, so offsets are byte offsets and
    ASCII patterns match in any ASCII-compatible encoding.
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    source = iter(chunks)
    chunk = next(source, b"")
    carry = ""
    offset = 0
    while True:
        # One chunk of lookahead tells whether this window is the last.
        following = next(source, None) if chunk else None
        last = following is None
        window = carry + decoder.decode(chunk, final=last)
        yield window, offset, last
        if following is None:
            return
        keep = min(overlap, len(window))
        carry = window[len(window) - keep :]
        offset += len(window) - keep
        chunk = following


def _complete(match: re.Match[str], window: str, last: bool) -> bool:
    # A match reaching the window's end may continue in the next chunk.
    return last or match.end() < len(window)


def _is_zlib_header(head: bytes) -> bool:
    # RFC 1950: deflate, a window of at most 32 KiB, a header check multiple
    # of 31 and no preset dictionary.
    if len(head) < 2:
        return False
    cmf, flg = head[0], head[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf * 256 + flg) % 31 == 0


class _PdfScan:
    """One PDF's scan: names in the raw bytes and in its deflated streams."""

    def __init__(self, fileobj: IO[bytes], size: int, limit: int, inflate: int) -> None:
        self.fileobj = fileobj
        self.size = size
        self.limit = limit
        self.inflate_limit = inflate
        self.inflated_in = 0
        self.inflated_out = 0
        self.last_stream = -1
        self.found: dict[Code, Finding] = {}
        self.incomplete: list[Finding] = []

    def run(self) -> list[Finding]:
        windows = text_windows(
            file_chunks(self.fileobj, self.limit), overlap=PDF_OVERLAP
        )
        for window, offset, last in windows:
            self._names(window, offset, last, "")
            for match in PDF_STREAM.finditer(window):
                if _complete(match, window, last):
                    self._inflate(offset + match.end())
            if self._done():
                break
        if self.size > self.limit:
            self.incomplete.append(_truncated("PDF", self.limit))
        return [*self.found.values(), *self.incomplete[:1]]

    def _done(self) -> bool:
        return len(self.found) == len(set(PDF_NAMES.values()))

    def _names(self, window: str, offset: int, last: bool, where: str) -> None:
        for match in PDF_NAME.finditer(window):
            raw = match.group(1)
            name = PDF_HEX_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), raw)
            code = PDF_NAMES.get(name)
            if code is None or code in self.found:
                continue
            if not _complete(match, window, last):
                continue
            written = f"/{raw}" if raw == name else f"/{raw} (that is /{name})"
            detail = f"{written} at byte {offset + match.start()}{where}"
            self.found[code] = Finding(code, detail)

    def _inflate(self, start: int) -> None:
        # The overlap shows a stream keyword twice; offsets only grow.
        if start <= self.last_stream or self.incomplete or self._done():
            return
        self.last_stream = start
        self.fileobj.seek(start)
        if not _is_zlib_header(self.fileobj.read(2)):
            return
        where = f" of the stream deflated from byte {start}"
        for window, offset, last in text_windows(
            self._inflated(start), overlap=PDF_OVERLAP
        ):
            self._names(window, offset, last, where)

    def _inflated(self, start: int) -> Iterator[bytes]:
        inflater = zlib.decompressobj()
        position = start
        while not inflater.eof:
            pending = inflater.unconsumed_tail
            if not pending:
                self.fileobj.seek(position)
                pending = self.fileobj.read(INFLATE_READ_BYTES)
                if not pending:
                    return
                position += len(pending)
                self.inflated_in += len(pending)
            try:
                out = inflater.decompress(pending, CHUNK_BYTES)
            except zlib.error:
                return  # not deflate after all, or damaged: readers fail too
            self.inflated_out += len(out)
            if max(self.inflated_in, self.inflated_out) > self.inflate_limit:
                self.incomplete.append(
                    Finding(
                        Code.INSPECTION_INCOMPLETE,
                        f"PDF streams inflate past {self.inflate_limit} bytes; "
                        "later streams were not scanned",
                    )
                )
                return
            if out:
                yield out


def scan_pdf(
    fileobj: IO[bytes], size: int, limit: int, inflate_limit: int
) -> list[Finding]:
    """Find JavaScript and Launch action names in a PDF, raw and deflated.

    Streams that start with a zlib header are inflated, so names inside
    object streams (``/ObjStm``) are seen; at most ``inflate_limit`` bytes go
    in and come out in all.
    """
    return _PdfScan(fileobj, size, limit, inflate_limit).run()


def markup_encoding(head: bytes) -> str:
    """The codec to read markup with: UTF-16 when the head says so."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if head[:2] == b"<\x00":
        return "utf-16-le"
    if head[:2] == b"\x00<":
        return "utf-16-be"
    return "latin-1"


def scan_markup(
    fileobj: IO[bytes], size: int, limit: int, encoding: str
) -> list[Finding]:
    """Find scripts, event handlers and script URLs in SVG or HTML."""
    found: list[str] = []
    for window, _offset, last in text_windows(
        file_chunks(fileobj, limit), overlap=MARKUP_OVERLAP, encoding=encoding
    ):
        for pattern, label in MARKUP_PATTERNS:
            if label in found:
                continue
            for match in pattern.finditer(window):
                if _complete(match, window, last):
                    found.append(label)
                    break
    findings = []
    if found:
        findings.append(Finding(Code.ACTIVE_CONTENT, ", ".join(found)))
    if size > limit:
        findings.append(_truncated("markup", limit))
    return findings


def _truncated(kind: str, limit: int) -> Finding:
    return Finding(
        Code.INSPECTION_INCOMPLETE,
        f"{kind} scan stopped after {limit} bytes; the rest was not scanned",
    )
