"""Pattern scans of PDF and markup content, in bounded, overlapping windows.

The file is read in 1 MiB chunks and each window keeps the tail of the one
before, so a pattern cut by a chunk boundary is still seen whole; a match
that touches the end of a window is left for the next one, which sees it
with what follows.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from typing import IO

from streams.inspection._model import Code, Finding

CHUNK_BYTES = 1024 * 1024

# A PDF name is a slash and regular characters, any of them written as #xx.
# Names longer than the overlap cannot be one of the names sought here.
PDF_NAME = re.compile(r"/((?:[^\x00\t\n\f\r /%()<>\[\]{}#]|#[0-9A-Fa-f]{2})+)")
PDF_HEX_ESCAPE = re.compile(r"#([0-9A-Fa-f]{2})")
PDF_OVERLAP = 256
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


def text_windows(
    fileobj: IO[bytes], *, limit: int, overlap: int, encoding: str = "latin-1"
) -> Iterator[tuple[str, int, bool]]:
    """Yield (window, offset of its first character, last) over the file.

    Latin-1 keeps one character per byte, so offsets are byte offsets and
    ASCII patterns match in any ASCII-compatible encoding.
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    fileobj.seek(0)
    carry = ""
    offset = 0
    read = 0
    while True:
        chunk = fileobj.read(min(CHUNK_BYTES, limit - read))
        read += len(chunk)
        last = not chunk or read >= limit
        window = carry + decoder.decode(chunk, final=last)
        yield window, offset, last
        if last:
            return
        keep = min(overlap, len(window))
        carry = window[len(window) - keep :]
        offset += len(window) - keep


def _complete(match: re.Match[str], window: str, last: bool) -> bool:
    # A match reaching the window's end may continue in the next chunk.
    return last or match.end() < len(window)


def scan_pdf(fileobj: IO[bytes], size: int, limit: int) -> list[Finding]:
    """Find JavaScript and Launch action names in a PDF's raw bytes."""
    found: dict[Code, Finding] = {}
    for window, offset, last in text_windows(fileobj, limit=limit, overlap=PDF_OVERLAP):
        for match in PDF_NAME.finditer(window):
            raw = match.group(1)
            name = PDF_HEX_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), raw)
            code = PDF_NAMES.get(name)
            if code is None or code in found or not _complete(match, window, last):
                continue
            written = f"/{raw}" if raw == name else f"/{raw} (that is /{name})"
            found[code] = Finding(code, f"{written} at byte {offset + match.start()}")
        if len(found) == len(set(PDF_NAMES.values())):
            break
    findings = list(found.values())
    if size > limit:
        findings.append(_truncated("PDF", limit))
    return findings


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
        fileobj, limit=limit, overlap=MARKUP_OVERLAP, encoding=encoding
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
