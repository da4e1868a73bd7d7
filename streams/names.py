"""Validation of client-supplied file names, and dataset table names.

A file name arrives in tus ``Upload-Metadata`` and later becomes part of an
object key, a registry row and a download header, so it is checked once, at
the gateway, and refused rather than repaired: silently stripping a path or a
control character would store a name the client never sent.

:func:`validate_filename` returns the NFC form of an acceptable name or
raises :class:`InvalidFilename` with a stable ``reason`` code.
:func:`safe_table_name` turns a file stem into a ClickHouse identifier.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

__all__ = [
    "MAX_FILENAME_BYTES",
    "MAX_TABLE_NAME_CHARS",
    "InvalidFilename",
    "safe_table_name",
    "validate_filename",
]

MAX_FILENAME_BYTES: Final = 255  # the common limit of ext4, XFS, APFS, NTFS
MAX_TABLE_NAME_CHARS: Final = 64

_MESSAGES: Final[dict[str, str]] = {
    "empty": "the file name is empty",
    "invalid-unicode": "the file name is not valid Unicode text",
    "nul-byte": "the file name contains a NUL character",
    "control-character": "the file name contains a control character",
    "bidi-override": "the file name contains a bidirectional override",
    "path-component": "the file name must not contain a directory part",
    "traversal": "the file name must not refer to a parent directory",
    "reserved-name": "the file name is a reserved device name",
    "trailing-dot-or-space": "the file name must not end in a dot or space",
    "too-long": f"the file name is longer than {MAX_FILENAME_BYTES} bytes",
}

# Embedding and isolate controls can make "evil\u202etxt.exe" display as
# "evilexe.txt"; they have no place in a file name.
_BIDI_CONTROLS: Final = frozenset(
    chr(cp) for cp in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))
)

# Cc covers C0, DEL and C1. Line and paragraph separators are refused with
# them because they break log lines and headers just as "\n" does.
_CONTROL_CATEGORIES: Final = frozenset({"Cc", "Zl", "Zp"})

# Windows opens the device whatever the extension ("con.txt" is CON), and
# also treats the superscript digits as COM and LPT port numbers.
_PORT_DIGITS: Final = "123456789\u00b9\u00b2\u00b3"
_RESERVED_NAMES: Final = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"com{d}" for d in _PORT_DIGITS}
    | {f"lpt{d}" for d in _PORT_DIGITS}
)

_NOT_IDENTIFIER: Final = re.compile(r"[^a-z0-9]+")


class InvalidFilename(ValueError):
    """A client-supplied file name was refused.

    ``reason`` is a short machine code that stays stable across releases;
    the message is for people. Neither repeats the refused name, which may
    itself hold control characters.
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message or _MESSAGES.get(reason, "invalid file name"))


def validate_filename(raw: str) -> str:
    """Return the NFC-normalised form of ``raw``, or raise InvalidFilename."""
    # Lone surrogates (from surrogateescape decoding) cannot be normalised
    # or stored as UTF-8.
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidFilename("invalid-unicode") from None

    # Compare and store one canonical form, so "é" composed and decomposed
    # name the same file.
    name = unicodedata.normalize("NFC", raw)

    if not name.strip():
        raise InvalidFilename("empty")

    if "\x00" in name:
        raise InvalidFilename("nul-byte")
    for char in name:
        if unicodedata.category(char) in _CONTROL_CATEGORIES:
            raise InvalidFilename("control-character")
        if char in _BIDI_CONTROLS:
            raise InvalidFilename("bidi-override")

    # Both separators are refused on every platform: a name written on
    # Linux may be read back on Windows.
    segments = re.split(r"[/\\]", name)
    if ".." in segments:
        raise InvalidFilename("traversal")
    if len(segments) > 1 or name == ".":
        raise InvalidFilename("path-component")

    # Windows ignores trailing spaces before the extension: "CON .txt" is CON.
    stem = name.split(".", 1)[0].rstrip(" ").casefold()
    if stem in _RESERVED_NAMES:
        raise InvalidFilename("reserved-name")

    # Windows drops a trailing dot or space, so "a.exe." would become "a.exe".
    if name.endswith((".", " ")):
        raise InvalidFilename("trailing-dot-or-space")

    if len(name.encode("utf-8")) > MAX_FILENAME_BYTES:
        raise InvalidFilename("too-long")

    return name


def safe_table_name(stem: str) -> str:
    """Turn a file stem into a ClickHouse table name such as ``iris_data_2024``.

    The result holds only lowercase ASCII letters, digits and underscores,
    starts with a letter and has at most 64 characters. Accents are folded
    ("Café" gives "cafe"); a stem with nothing usable gives ``dataset``.
    Different stems can map to one name, so callers must handle collisions,
    and should still quote the name in SQL since it may be a keyword.
    """
    # NFKD splits "é" into "e" plus a combining accent, which the ASCII
    # encode then drops.
    folded = unicodedata.normalize("NFKD", stem)
    ascii_only = folded.encode("ascii", "ignore").decode("ascii").lower()
    name = _NOT_IDENTIFIER.sub("_", ascii_only).strip("_")

    if not name:
        return "dataset"
    if not name[0].isalpha():
        name = f"dataset_{name}"

    return name[:MAX_TABLE_NAME_CHARS].rstrip("_")
