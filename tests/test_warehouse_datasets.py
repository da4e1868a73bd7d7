"""Dataset loading on a real chdb, from the Palmer penguins CSV (PyPI
``palmerpenguins``) and TSV, JSON Lines and Parquet derived from it with
pyarrow: types match the source's, drift is handled, replays add nothing."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from ops.demo.corpus import _locate_penguins_csv, read_typed_csv
from streams.warehouse import datasets
from streams.warehouse.backend import ChdbBackend
from streams.warehouse.datasets import DatasetRejected
from streams.warehouse.schema import migrate

NULLS = ["NA", ""]
ARROW_TYPES = {
    pa.string(): "Nullable(String)",
    pa.int64(): "Nullable(Int64)",
    pa.float64(): "Nullable(Float64)",
}
PYTHON_TYPES = {
    str: "Nullable(String)",
    int: "Nullable(Int64)",
    float: "Nullable(Float64)",
}


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbBackend]:
    engine = ChdbBackend(tmp_path_factory.mktemp("chdb"))
    migrate(engine)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def penguins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The CSV as shipped, and TSV, JSON Lines, Parquet derived with pyarrow."""
    out = tmp_path_factory.mktemp("penguins")
    source, _ = _locate_penguins_csv()
    csv_path = out / "penguins.csv"
    csv_path.write_bytes(source.read_bytes())
    table = pa_csv.read_csv(
        csv_path,
        convert_options=pa_csv.ConvertOptions(
            null_values=NULLS, strings_can_be_null=True
        ),
    )
    tsv_path = out / "penguins.tsv"
    pa_csv.write_csv(table, tsv_path, pa_csv.WriteOptions(delimiter="\t"))
    jsonl_path = out / "penguins.jsonl"
    with jsonl_path.open("w") as handle:
        for row in table.to_pylist():
            handle.write(json.dumps(row) + "\n")
    parquet_path = out / "penguins.parquet"
    pq.write_table(table, parquet_path)
    return {
        "csv": csv_path,
        "tsv": tsv_path,
        "jsonl": jsonl_path,
        "parquet": parquet_path,
    }


def _load(backend: ChdbBackend, path: Path, **kw: str) -> dict[str, Any]:
    values = {
        "tenant": kw.get("tenant", f"t{uuid.uuid4().hex[:10]}"),
        "dataset": kw.get("dataset", "penguins"),
        "upload_id": kw.get("upload_id", uuid.uuid4().hex),
        "filename": kw.get("filename", path.name),
    }
    return datasets.load(backend, path=path, **values) | values


def _types(backend: ChdbBackend, record: dict[str, Any]) -> dict[str, str]:
    rows = backend.query_json(
        f"DESCRIBE datasets.`{record['tenant']}__{record['dataset']}`"
    )
    return {r["name"]: r["type"] for r in rows if r["name"] != "_upload_id"}


def _value(v: Any) -> str:
    # Numbers compare as numbers: JSON output writes 35.0 as 35.
    return repr(float(v)) if isinstance(v, int | float) else repr(v)


def _contents(backend: ChdbBackend, record: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = backend.query_json(
        f"SELECT * EXCEPT _upload_id FROM datasets."
        f"`{record['tenant']}__{record['dataset']}`"
    )
    return sorted(tuple(map(_value, r.values())) for r in rows)


def _expected_rows(path: Path) -> list[tuple[str, ...]]:
    rows = read_typed_csv(path)
    return sorted(tuple(map(_value, r.values())) for r in rows)


def test_csv_types_match_the_source(
    backend: ChdbBackend, penguins: dict[str, Path]
) -> None:
    record = _load(backend, penguins["csv"])
    typed = read_typed_csv(penguins["csv"])
    expected = {}
    for name in typed[0]:
        kinds = {type(r[name]) for r in typed if r[name] is not None}
        kind = float if kinds == {int, float} else kinds.pop()
        expected[name] = PYTHON_TYPES[kind]
    assert _types(backend, record) == expected
    assert expected["body_mass_g"] == "Nullable(Int64)"
    assert expected["bill_length_mm"] == "Nullable(Float64)"
    assert record["rows"] == 344
    assert _contents(backend, record) == _expected_rows(penguins["csv"])


@pytest.mark.parametrize("kind", ["tsv", "jsonl", "parquet"])
def test_derived_formats_types_match_the_source(
    backend: ChdbBackend, penguins: dict[str, Path], kind: str
) -> None:
    record = _load(backend, penguins[kind])
    schema = pq.read_schema(penguins["parquet"])
    assert _types(backend, record) == {
        field.name: ARROW_TYPES[field.type] for field in schema
    }
    assert record["rows"] == 344
    assert _contents(backend, record) == _expected_rows(penguins["csv"])


def test_every_row_carries_its_upload_id(
    backend: ChdbBackend, penguins: dict[str, Path]
) -> None:
    first = _load(backend, penguins["csv"])
    second = _load(backend, penguins["parquet"], tenant=first["tenant"])
    rows = backend.query_json(
        f"SELECT _upload_id, count() AS n FROM datasets.`{first['tenant']}__penguins` "
        "GROUP BY _upload_id ORDER BY _upload_id"
    )
    assert rows == sorted(
        [
            {"_upload_id": first["upload_id"], "n": 344},
            {"_upload_id": second["upload_id"], "n": 344},
        ],
        key=lambda r: str(r["_upload_id"]),
    )


def test_loading_an_upload_again_replaces_its_rows(
    backend: ChdbBackend, penguins: dict[str, Path]
) -> None:
    record = _load(backend, penguins["csv"])
    again = _load(
        backend,
        penguins["csv"],
        tenant=record["tenant"],
        upload_id=record["upload_id"],
    )
    assert again["rows"] == 344
    assert len(_contents(backend, record)) == 344
    assert datasets.loaded(backend, record["tenant"], "penguins", record["upload_id"])


def test_new_columns_are_added(
    backend: ChdbBackend, penguins: dict[str, Path], tmp_path: Path
) -> None:
    record = _load(backend, penguins["csv"])
    wider = tmp_path / "wider.csv"
    lines = penguins["csv"].read_text().splitlines()
    wider.write_text(
        "\n".join(
            [lines[0] + ",ring"] + [f"{line},r{i}" for i, line in enumerate(lines[1:4])]
        )
        + "\n"
    )
    added = _load(backend, wider, tenant=record["tenant"])
    assert added["added_columns"] == ["ring"]
    assert _types(backend, record)["ring"] == "Nullable(String)"
    rows = backend.query_json(
        f"SELECT countIf(ring IS NULL) AS old, countIf(ring IS NOT NULL) AS new "
        f"FROM datasets.`{record['tenant']}__penguins`"
    )
    assert rows == [{"old": 344, "new": 3}]


def test_integers_widen_into_a_float_column(
    backend: ChdbBackend, penguins: dict[str, Path], tmp_path: Path
) -> None:
    record = _load(backend, penguins["csv"])
    whole = tmp_path / "whole.csv"
    whole.write_text("species,bill_length_mm\nAdelie,40\nGentoo,47\n")
    _load(backend, whole, tenant=record["tenant"])
    assert _types(backend, record)["bill_length_mm"] == "Nullable(Float64)"


def test_an_incompatible_type_change_is_rejected(
    backend: ChdbBackend, penguins: dict[str, Path], tmp_path: Path
) -> None:
    record = _load(backend, penguins["csv"])
    text = tmp_path / "text.csv"
    text.write_text("species,body_mass_g\nAdelie,heavy\nGentoo,light\n")
    with pytest.raises(DatasetRejected) as refused:
        _load(backend, text, tenant=record["tenant"])
    assert "body_mass_g: table has Nullable(Int64), file has Nullable(String)" in str(
        refused.value
    )
    assert len(_contents(backend, record)) == 344


def test_delimiter_and_missing_header_are_detected(
    backend: ChdbBackend, tmp_path: Path
) -> None:
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text(
        "city;population;area\nLyon;522969;47.87\nNice;348085;71.92\n"
    )
    record = _load(backend, semicolons)
    assert _types(backend, record) == {
        "city": "Nullable(String)",
        "population": "Nullable(Int64)",
        "area": "Nullable(Float64)",
    }

    headless = tmp_path / "headless.csv"
    headless.write_text("Lyon,522969\nNice,348085\n")
    record = _load(backend, headless)
    assert _types(backend, record) == {
        "c1": "Nullable(String)",
        "c2": "Nullable(Int64)",
    }
    assert record["rows"] == 2

    text_only = tmp_path / "names.csv"
    text_only.write_text("first,last\nAda,Lovelace\nAlan,Turing\nGrace,Hopper\n")
    record = _load(backend, text_only)
    assert list(_types(backend, record)) == ["first", "last"]
    assert record["rows"] == 3


def test_unquoted_tsv_reads_backslash_escapes(
    backend: ChdbBackend, tmp_path: Path
) -> None:
    tsv = tmp_path / "plain.tsv"
    tsv.write_text("name\tscore\nA\\tB\t1.5\nC\t\\N\n")
    record = _load(backend, tsv)
    rows = backend.query_json(
        f"SELECT name, score FROM datasets.`{record['tenant']}__penguins` ORDER BY name"
    )
    assert rows == [{"name": "A\tB", "score": 1.5}, {"name": "C", "score": None}]


def test_unknown_extensions_are_rejected(backend: ChdbBackend, tmp_path: Path) -> None:
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(DatasetRejected):
        _load(backend, path)


def test_floats_survive_exactly(
    backend: ChdbBackend, penguins: dict[str, Path]
) -> None:
    record = _load(backend, penguins["parquet"])
    rows = backend.query_json(
        f"SELECT sum(bill_length_mm) AS s FROM datasets.`{record['tenant']}__penguins`"
    )
    expected = sum(
        r["bill_length_mm"]
        for r in read_typed_csv(penguins["csv"])
        if r["bill_length_mm"]
    )
    assert math.isclose(float(rows[0]["s"]), expected, rel_tol=1e-12)


def test_a_bad_row_past_the_sample_leaves_no_rows(
    backend: ChdbBackend, tmp_path: Path
) -> None:
    path = tmp_path / "late.csv"
    good = "".join(f"{i},{i * 2}\n" for i in range(200_000))
    path.write_text("n,double\n" + good + "oops,never\n")
    with pytest.raises(DatasetRejected):
        _load(backend, path, tenant="latebad")
    rows = backend.query_json("SELECT count() AS n FROM datasets.latebad__penguins")
    assert rows == [{"n": 0}]
