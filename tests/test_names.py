"""Tests for file name validation and dataset table names."""

from __future__ import annotations

import unicodedata

import pytest

from streams.names import InvalidFilename, safe_table_name, validate_filename

REFUSED = [
    # (raw name, reason code)
    ("", "empty"),
    ("   ", "empty"),
    ("\t\n", "empty"),
    ("a\x00b", "nul-byte"),
    ("report\x00.pdf", "nul-byte"),
    ("a\x1bb.txt", "control-character"),
    ("line\nbreak.txt", "control-character"),
    ("del\x7f.txt", "control-character"),
    ("c1\x85.txt", "control-character"),
    ("sep\u2028.txt", "control-character"),
    ("evil\u202etxt.exe", "bidi-override"),
    ("a\u202ab.txt", "bidi-override"),
    ("a\u2066b\u2069.txt", "bidi-override"),
    ("../../etc/passwd", "traversal"),
    ("..", "traversal"),
    ("..\\windows\\system32", "traversal"),
    ("a/../b", "traversal"),
    (".", "path-component"),
    ("dir/file.txt", "path-component"),
    ("/etc/passwd", "path-component"),
    ("dir\\file.txt", "path-component"),
    ("file.txt/", "path-component"),
    ("CON", "reserved-name"),
    ("con.txt", "reserved-name"),
    ("Nul.tar.gz", "reserved-name"),
    ("aux", "reserved-name"),
    ("PRN.csv", "reserved-name"),
    ("com1", "reserved-name"),
    ("LPT9.log", "reserved-name"),
    ("COM\u00b9.txt", "reserved-name"),
    ("CON .txt", "reserved-name"),
    ("file. ", "trailing-dot-or-space"),
    ("file.", "trailing-dot-or-space"),
    ("file ", "trailing-dot-or-space"),
    ("...", "trailing-dot-or-space"),
    ("a" * 256, "too-long"),
    ("é" * 128, "too-long"),  # 128 characters but 256 UTF-8 bytes
    ("bad\udcffname.txt", "invalid-unicode"),
]

ACCEPTED = [
    "report.pdf",
    "Iris Data-2024.csv",
    ".bashrc",
    "archive.tar.gz",
    "résumé.docx",
    "データ.csv",
    "a" * 255,
    "é" * 127,
    "console.log",  # starts with a reserved name but is not one
    "com10.txt",
    "lpt.txt",
    "CONFIG",
    "..hidden",
    "a..b.txt",
    " leading-space.txt",
]


@pytest.mark.parametrize(("raw", "reason"), REFUSED)
def test_refused_names_carry_a_stable_reason(raw: str, reason: str) -> None:
    with pytest.raises(InvalidFilename) as caught:
        validate_filename(raw)

    assert caught.value.reason == reason
    assert str(caught.value)  # a human-readable message is always present


@pytest.mark.parametrize("raw", ACCEPTED)
def test_accepted_names_are_returned_unchanged(raw: str) -> None:
    assert validate_filename(raw) == raw


def test_invalid_filename_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="directory"):
        validate_filename("a/b")


def test_composed_and_decomposed_forms_give_one_name() -> None:
    composed = "caf\u00e9.csv"
    decomposed = "cafe\u0301.csv"
    assert composed != decomposed

    assert validate_filename(decomposed) == composed
    assert validate_filename(composed) == composed
    assert validate_filename(decomposed) == unicodedata.normalize("NFC", decomposed)


def test_length_is_measured_after_normalisation() -> None:
    # Decomposed, 127 "é" take 381 bytes; composed they take 254 and fit.
    assert validate_filename("e\u0301" * 127) == "\u00e9" * 127
    with pytest.raises(InvalidFilename) as caught:
        validate_filename("e\u0301" * 128)
    assert caught.value.reason == "too-long"


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("Iris Data-2024", "iris_data_2024"),
        ("sales", "sales"),
        ("  Q3 -- Revenue!! ", "q3_revenue"),
        ("Café Menü", "cafe_menu"),
        ("2024 report", "dataset_2024_report"),
        ("_private", "private"),
        ("データ", "dataset"),
        ("", "dataset"),
        ("!!!", "dataset"),
        ("x" * 100, "x" * 64),
        ("a" * 63 + " b", "a" * 63),  # no trailing underscore after the cut
    ],
)
def test_safe_table_name(stem: str, expected: str) -> None:
    assert safe_table_name(stem) == expected


@pytest.mark.parametrize(
    "stem", ["Iris Data-2024", "9", "ä" * 200, "../x", "DROP TABLE x;--"]
)
def test_safe_table_name_is_always_an_identifier(stem: str) -> None:
    name = safe_table_name(stem)

    assert 1 <= len(name) <= 64
    assert name[0].isascii() and name[0].isalpha()
    assert all(c.isascii() and (c.islower() or c.isdigit() or c == "_") for c in name)
