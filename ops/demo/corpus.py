"""Build the demo's corpus of real files, infected and clean, with a manifest.

Run from the repository root::

    python -m ops.demo.corpus OUT_DIR

Every file comes from a real source; nothing is fabricated for the "real file"
kinds:

* infected: the 44 files of Debian's ``clamav-testfiles`` package, copied as-is,
  and the EICAR test string (built at run time) as plain, zipped, zipped twice
  and gzipped files;
* clean: the Palmer penguins CSV shipped by the PyPI package ``palmerpenguins``,
  a JSON Lines file and a Parquet file derived from it, a PDF shipped by the
  Debian package ``shared-mime-info`` and a PNG shipped by ``debconf``.

Output is deterministic: fixed zip and gzip timestamps, so reruns give identical
bytes. ``OUT_DIR/manifest.json`` lists each file's name, size, sha256, kind,
expected verdict and source. A missing source fails with a message naming the
package to install.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import shutil
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

INFECTED: Final = "infected"
CLEAN: Final = "clean"

CLAMAV_TESTFILES_DIR: Final = Path("/usr/share/clamav-testfiles")
CLAMAV_TESTFILES_PACKAGE: Final = "clamav-testfiles"
CLAMAV_TESTFILES_COUNT: Final = 44

PDF_SOURCE: Final = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")
PDF_PACKAGE: Final = "shared-mime-info"
PDF_NAME: Final = "shared_mime_info_spec.pdf"

PNG_SOURCE: Final = Path("/usr/share/pixmaps/debian-logo.png")
PNG_PACKAGE: Final = "debconf"
PNG_NAME: Final = "debian_logo.png"

CSV_PYPI_PACKAGE: Final = "palmerpenguins"
CSV_RESOURCE: Final = ("data", "penguins.csv")
CSV_NAME: Final = "penguins.csv"
JSONL_NAME: Final = "penguins_jsonl.jsonl"
PARQUET_NAME: Final = "penguins_parquet.parquet"
CSV_NULLS: Final = frozenset({"", "NA"})

EICAR: Final = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SHA256: Final = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
EICAR_NAME: Final = "eicar.com"
EICAR_ZIP_NAME: Final = "eicar.zip"
EICAR_DOUBLE_ZIP_NAME: Final = "eicar_double.zip"
EICAR_GZ_NAME: Final = "eicar.com.gz"
EICAR_SOURCE: Final = "generated: EICAR standard anti-virus test string"

# 1980-01-01 00:00:00 is the earliest date a zip entry can hold.
ZIP_EPOCH: Final = (1980, 1, 1, 0, 0, 0)
MANIFEST_NAME: Final = "manifest.json"


class CorpusSourceError(RuntimeError):
    """A real source file is missing: the message names what to install."""


@dataclass(frozen=True)
class CorpusFile:
    """One file of the corpus and the verdict the scanner should give it."""

    path: Path
    kind: str
    expected_verdict: str
    source: str


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def _require_file(path: Path, install_hint: str) -> Path:
    if not path.is_file():
        raise CorpusSourceError(f"{path} is missing: {install_hint}")
    return path


def _apt_hint(package: str) -> str:
    return f"install the Debian package with `apt-get install {package}`"


def _pypi_hint(package: str) -> str:
    return (
        f"install the PyPI package `{package}` into the project's venv "
        "(it is a dev dependency: `pip install -e .[dev]`)"
    )


# --- infected ----------------------------------------------------------------


def _copy_clamav_testfiles(out_dir: Path, source_dir: Path) -> list[CorpusFile]:
    hint = _apt_hint(CLAMAV_TESTFILES_PACKAGE)
    if not source_dir.is_dir():
        raise CorpusSourceError(f"{source_dir} is missing: {hint}")
    sources = sorted(p for p in source_dir.iterdir() if p.is_file())
    if len(sources) != CLAMAV_TESTFILES_COUNT:
        raise CorpusSourceError(
            f"{source_dir} holds {len(sources)} files, expected "
            f"{CLAMAV_TESTFILES_COUNT}: reinstall it with "
            f"`apt-get install --reinstall {CLAMAV_TESTFILES_PACKAGE}`"
        )
    files: list[CorpusFile] = []
    for src in sources:
        dest = out_dir / src.name
        shutil.copyfile(src, dest)
        files.append(
            CorpusFile(
                path=dest,
                kind=INFECTED,
                expected_verdict=INFECTED,
                source=f"deb:{CLAMAV_TESTFILES_PACKAGE}:{src}",
            )
        )
    return files


def _zip_bytes(member_name: str, payload: bytes) -> bytes:
    """Return a zip archive holding one member, byte-for-byte reproducible."""
    info = zipfile.ZipInfo(member_name, date_time=ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # Unix, whatever platform builds it
    info.external_attr = 0o100644 << 16  # regular file, rw-r--r--
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(info, payload, compresslevel=9)
    return buffer.getvalue()


def _gzip_bytes(member_name: str, payload: bytes) -> bytes:
    """Return gzip data with a fixed mtime, so reruns give identical bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(
        filename=member_name, mode="wb", compresslevel=9, fileobj=buffer, mtime=0
    ) as handle:
        handle.write(payload)
    return buffer.getvalue()


def _write_eicar_variants(out_dir: Path) -> list[CorpusFile]:
    if hashlib.sha256(EICAR).hexdigest() != EICAR_SHA256:  # pragma: no cover
        raise AssertionError("the built-in EICAR string is corrupt")
    single_zip = _zip_bytes(EICAR_NAME, EICAR)
    variants: list[tuple[str, bytes, str]] = [
        (EICAR_NAME, EICAR, EICAR_SOURCE),
        (EICAR_ZIP_NAME, single_zip, f"{EICAR_SOURCE}, zipped"),
        (
            EICAR_DOUBLE_ZIP_NAME,
            _zip_bytes(EICAR_ZIP_NAME, single_zip),
            f"{EICAR_SOURCE}, zipped twice",
        ),
        (
            EICAR_GZ_NAME,
            _gzip_bytes(EICAR_NAME, EICAR),
            f"{EICAR_SOURCE}, gzipped",
        ),
    ]
    files: list[CorpusFile] = []
    for name, payload, source in variants:
        dest = out_dir / name
        dest.write_bytes(payload)
        files.append(CorpusFile(dest, INFECTED, INFECTED, source))
    return files


# --- clean -------------------------------------------------------------------


def _locate_penguins_csv() -> tuple[Path, str]:
    """Find the CSV inside the installed package without importing it."""
    hint = _pypi_hint(CSV_PYPI_PACKAGE)
    spec = importlib.util.find_spec(CSV_PYPI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusSourceError(f"Python package {CSV_PYPI_PACKAGE} is missing: {hint}")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    path = _require_file(package_dir.joinpath(*CSV_RESOURCE), hint)
    version = importlib.metadata.version(CSV_PYPI_PACKAGE)
    resource = "/".join((CSV_PYPI_PACKAGE, *CSV_RESOURCE))
    return path, f"pypi:{CSV_PYPI_PACKAGE}=={version}:{resource}"


def _column_type(values: Iterable[str]) -> type[int] | type[float] | type[str]:
    """Return the narrowest of int, float and str that holds every value."""
    present = [v for v in values if v not in CSV_NULLS]
    for candidate in (int, float):
        try:
            for value in present:
                candidate(value)
        except ValueError:
            continue
        return candidate
    return str


def read_typed_csv(path: Path) -> list[dict[str, Any]]:
    """Read a CSV into rows whose values are typed per column.

    A column whose every value is an integer gives ints, else one whose every
    value is a number gives floats, else strings; "NA" and "" give None.
    """
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        raw = list(reader)
        columns = list(reader.fieldnames or [])
    types = {col: _column_type(row[col] for row in raw) for col in columns}
    return [
        {
            col: None if row[col] in CSV_NULLS else types[col](row[col])
            for col in columns
        }
        for row in raw
    ]


def _write_jsonl(rows: Sequence[dict[str, Any]], dest: Path) -> None:
    with dest.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_parquet(csv_path: Path, dest: Path) -> None:
    try:
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise CorpusSourceError(
            f"pyarrow is missing, needed for {dest.name}: {_pypi_hint('pyarrow')}"
        ) from exc
    options = pa_csv.ConvertOptions(null_values=sorted(CSV_NULLS))
    table = pa_csv.read_csv(csv_path, convert_options=options)
    pq.write_table(table, dest)


def _copy_debian_file(src: Path, package: str, out_dir: Path, name: str) -> CorpusFile:
    _require_file(src, _apt_hint(package))
    dest = out_dir / name
    shutil.copyfile(src, dest)
    return CorpusFile(dest, CLEAN, CLEAN, f"deb:{package}:{src}")


def _write_clean_files(out_dir: Path) -> list[CorpusFile]:
    csv_src, csv_source = _locate_penguins_csv()
    csv_dest = out_dir / CSV_NAME
    shutil.copyfile(csv_src, csv_dest)

    jsonl_dest = out_dir / JSONL_NAME
    _write_jsonl(read_typed_csv(csv_dest), jsonl_dest)

    parquet_dest = out_dir / PARQUET_NAME
    _write_parquet(csv_dest, parquet_dest)

    derived = f"derived from {CSV_NAME} ({csv_source})"
    return [
        CorpusFile(csv_dest, CLEAN, CLEAN, csv_source),
        CorpusFile(jsonl_dest, CLEAN, CLEAN, f"{derived}, one JSON object a row"),
        CorpusFile(parquet_dest, CLEAN, CLEAN, f"{derived}, written by pyarrow"),
        _copy_debian_file(PDF_SOURCE, PDF_PACKAGE, out_dir, PDF_NAME),
        _copy_debian_file(PNG_SOURCE, PNG_PACKAGE, out_dir, PNG_NAME),
    ]


# --- manifest and entry points -------------------------------------------------


def manifest_entries(files: Iterable[CorpusFile]) -> list[dict[str, Any]]:
    """Describe each file as the manifest lists it."""
    return [
        {
            "name": f.path.name,
            "size": f.path.stat().st_size,
            "sha256": sha256_file(f.path),
            "kind": f.kind,
            "expected_verdict": f.expected_verdict,
            "source": f.source,
        }
        for f in files
    ]


def write_manifest(out_dir: Path, files: Iterable[CorpusFile]) -> Path:
    """Write ``OUT_DIR/manifest.json`` and return its path."""
    path = out_dir / MANIFEST_NAME
    document = {"files": manifest_entries(files)}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def build_corpus(
    out_dir: Path, *, clamav_testfiles_dir: Path = CLAMAV_TESTFILES_DIR
) -> list[CorpusFile]:
    """Build the corpus into ``out_dir`` (created if needed) with its manifest.

    Raises CorpusSourceError, naming the package to install, if a source is
    missing.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [
        *_copy_clamav_testfiles(out_dir, clamav_testfiles_dir),
        *_write_eicar_variants(out_dir),
        *_write_clean_files(out_dir),
    ]
    names = [f.path.name for f in files]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates or MANIFEST_NAME in names:  # pragma: no cover
        raise RuntimeError(f"corpus file names collide: {duplicates}")
    write_manifest(out_dir, files)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: build the corpus and print a summary."""
    parser = argparse.ArgumentParser(
        prog="python -m ops.demo.corpus",
        description="Build Sluice's demo corpus of real infected and clean files.",
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    args = parser.parse_args(argv)
    try:
        files = build_corpus(args.out_dir)
    except CorpusSourceError as exc:
        print(f"corpus: {exc}", file=sys.stderr)
        return 1
    infected = sum(f.kind == INFECTED for f in files)
    print(
        f"wrote {len(files)} files ({infected} infected, "
        f"{len(files) - infected} clean) and {MANIFEST_NAME} to {args.out_dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
