"""The demo corpus: real infected and clean files with a truthful manifest."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from ops.demo import corpus
from ops.demo.corpus import CorpusFile, build_corpus

EICAR_SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
EICAR_VARIANTS = ("eicar.com", "eicar.zip", "eicar_double.zip", "eicar.com.gz")
MAGIC = {
    ".pdf": b"%PDF-",
    ".png": b"\x89PNG\r\n\x1a\n",
    ".parquet": b"PAR1",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CorpusFile]]:
    out_dir = tmp_path_factory.mktemp("corpus")
    return out_dir, build_corpus(out_dir)


def _by_name(files: list[CorpusFile]) -> dict[str, CorpusFile]:
    return {f.path.name: f for f in files}


def test_all_clamav_testfiles_are_copied_as_is(
    built: tuple[Path, list[CorpusFile]],
) -> None:
    out_dir, files = built
    testfiles = [f for f in files if f.source.startswith("deb:clamav-testfiles:")]
    assert len(testfiles) == 44
    for f in testfiles:
        original = corpus.CLAMAV_TESTFILES_DIR / f.path.name
        assert f.path.read_bytes() == original.read_bytes()
        assert (f.kind, f.expected_verdict) == ("infected", "infected")


def test_eicar_variants_hold_the_standard_string(
    built: tuple[Path, list[CorpusFile]],
) -> None:
    out_dir, files = built
    by_name = _by_name(files)
    for name in EICAR_VARIANTS:
        assert by_name[name].expected_verdict == "infected"

    plain = (out_dir / "eicar.com").read_bytes()
    assert len(plain) == 68
    assert hashlib.sha256(plain).hexdigest() == EICAR_SHA256

    with zipfile.ZipFile(out_dir / "eicar.zip") as archive:
        assert archive.namelist() == ["eicar.com"]
        assert archive.read("eicar.com") == plain

    with zipfile.ZipFile(out_dir / "eicar_double.zip") as outer:
        assert outer.namelist() == ["eicar.zip"]
        inner_bytes = outer.read("eicar.zip")
    assert inner_bytes == (out_dir / "eicar.zip").read_bytes()
    with zipfile.ZipFile(io.BytesIO(inner_bytes)) as inner:
        assert inner.read("eicar.com") == plain

    assert gzip.decompress((out_dir / "eicar.com.gz").read_bytes()) == plain


def test_jsonl_has_one_typed_object_per_csv_row(
    built: tuple[Path, list[CorpusFile]],
) -> None:
    out_dir, _ = built
    with (out_dir / "penguins.csv").open(newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    lines = (out_dir / "penguins_jsonl.jsonl").read_text().splitlines()
    assert len(csv_rows) == 344
    assert len(lines) == len(csv_rows)

    objects = [json.loads(line) for line in lines]
    first = objects[0]
    assert first == {
        "species": "Adelie",
        "island": "Torgersen",
        "bill_length_mm": 39.1,
        "bill_depth_mm": 18.7,
        "flipper_length_mm": 181,
        "body_mass_g": 3750,
        "sex": "male",
        "year": 2007,
    }
    assert isinstance(objects[2]["bill_depth_mm"], float)  # "18" in a float column
    assert all(isinstance(o["year"], int) for o in objects)
    assert objects[3]["bill_length_mm"] is None  # "NA" in the CSV


def test_parquet_matches_the_csv(built: tuple[Path, list[CorpusFile]]) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out_dir, _ = built
    table = pq.read_table(out_dir / "penguins_parquet.parquet")
    assert table.num_rows == 344
    assert table.column("body_mass_g").to_pylist()[0] == 3750


def test_clean_files_are_real_and_named_by_kind(
    built: tuple[Path, list[CorpusFile]],
) -> None:
    _, files = built
    clean = [f for f in files if f.kind == "clean"]
    suffixes = {f.path.suffix for f in clean}
    assert {".csv", ".jsonl", ".pdf", ".png", ".parquet"} <= suffixes
    for f in clean:
        assert f.expected_verdict == "clean"
        assert f.path.stem == f.path.stem.lower()
        assert f.path.stem.replace("_", "").isalnum()
        magic = MAGIC.get(f.path.suffix)
        if magic is not None:
            assert f.path.read_bytes().startswith(magic), f.path.name


def test_manifest_describes_every_file(built: tuple[Path, list[CorpusFile]]) -> None:
    out_dir, files = built
    manifest = json.loads((out_dir / "manifest.json").read_text())
    entries = manifest["files"]
    assert [e["name"] for e in entries] == [f.path.name for f in files]
    assert len(entries) == 44 + len(EICAR_VARIANTS) + 5
    for entry in entries:
        data = (out_dir / entry["name"]).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["kind"] in {"infected", "clean"}
        assert entry["expected_verdict"] == entry["kind"]
        assert entry["source"]


def test_rebuild_gives_identical_bytes(
    built: tuple[Path, list[CorpusFile]], tmp_path: Path
) -> None:
    out_dir, _ = built
    build_corpus(tmp_path)
    assert (tmp_path / "manifest.json").read_bytes() == (
        out_dir / "manifest.json"
    ).read_bytes()


def test_missing_source_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(corpus.CorpusSourceError, match="clamav-testfiles"):
        build_corpus(tmp_path / "out", clamav_testfiles_dir=tmp_path / "absent")


def test_cli_reports_missing_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(corpus, "PDF_SOURCE", tmp_path / "absent.pdf")
    assert corpus.main([str(tmp_path / "out")]) == 1
    assert "apt-get install shared-mime-info" in capsys.readouterr().err
