"""Tabular uploads as per-tenant tables: ``datasets.<tenant>__<name>``.

A clean CSV, TSV, JSON Lines or Parquet file is loaded in four steps:

1. **Sniff** the dialect from the file's first 64 KiB: the CSV delimiter
   (``,`` ``;`` ``|`` or tab), the token that stands for a missing value
   (``NA``, ``NULL``, ...), and whether a TSV is quoted like a CSV.
2. **Infer** column types with ClickHouse's own schema inference, every
   column Nullable so the same data always gives the same types, and decide
   whether the first row is a header.
3. **Plan** against the table: a new table takes the inferred types; an
   existing one gains the file's new columns, reads a known column as the
   table's type when that loses nothing (an integer column into Float64,
   anything into String) and refuses the file otherwise
   (:class:`DatasetRejected`, dead-lettered as ``WAREHOUSE``).
4. **Load** the rows streamed by the backend, each tagged with
   ``_upload_id``, after deleting any rows an interrupted earlier attempt
   left; the load is then recorded in ``sluice.dataset_loads``, and a replay
   of an upload already recorded there loads nothing.

Limits: types are inferred from the first 25,000 rows (ClickHouse's
default), so a later value that does not fit (text in a numeric column)
rejects the file with ClickHouse's message, and its rows are removed; a
missing-value token such as ``NA`` turns that token into NULL in every
column, text columns included.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streams.errors import WarehouseRejected
from streams.logs import get_logger
from streams.warehouse.backend import Backend, Column, QuerySettings, ident, quote
from streams.warehouse.schema import DATABASE, DATASETS

log = get_logger(__name__)

UPLOAD_ID = "_upload_id"
SNIFF_BYTES = 64 * 1024
CSV_DELIMITERS = ",;\t|"
# Tokens that mean "no value", most specific first; R writes NA.
NULL_TOKENS = ("NA", "N/A", "NULL", "null", "None", "\\N")
EXTENSIONS = {
    "csv": "csv",
    "tsv": "tsv",
    "tab": "tsv",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "parquet": "parquet",
}
_GENERATED_NAME = re.compile(r"^c\d+$")
_INTEGER = re.compile(r"^U?Int(8|16|32|64|128|256)$")
_FLOAT = re.compile(r"^Float(32|64)$")

# Every column Nullable: a column's type must not depend on whether the
# rows ClickHouse sampled happened to hold a missing value.
INFERENCE_SETTINGS: dict[str, str | int] = {
    "schema_inference_make_columns_nullable": 1,
    "input_format_csv_detect_header": 1,
    "input_format_tsv_detect_header": 1,
}


class DatasetRejected(WarehouseRejected):
    """A file that cannot load into its dataset table (format, drift)."""


@dataclass(frozen=True)
class Dialect:
    """How to read one file: ClickHouse format and format settings."""

    kind: str
    format: str
    settings: dict[str, str | int] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What a load does to its table."""

    table: str
    create: bool
    columns: list[Column]
    added: list[Column]


def table_name(tenant: str, dataset: str) -> str:
    """The dataset table's name inside the ``datasets`` database."""
    return f"{tenant}__{dataset}"


def qualified(tenant: str, dataset: str) -> str:
    return f"{DATASETS}.{ident(table_name(tenant, dataset))}"


def kind_of(filename: str) -> str:
    """The tabular kind of a file name, or DatasetRejected."""
    ext = filename.rpartition(".")[2].lower()
    kind = EXTENSIONS.get(ext)
    if kind is None:
        raise DatasetRejected(f"no dataset loader for .{ext} files")
    return kind


def _head(path: Path) -> str:
    with path.open("rb") as handle:
        data = handle.read(SNIFF_BYTES)
    if len(data) == SNIFF_BYTES:
        # Drop the last, probably cut, line; keep at least one.
        cut = data.rfind(b"\n")
        data = data[: cut + 1] if cut > 0 else data
    return data.decode("utf-8", "replace")


def _delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:
        return ","


def _null_token(fields: list[str]) -> str | None:
    counts = Counter(f for f in fields if f in NULL_TOKENS)
    if not counts:
        return None
    return counts.most_common(1)[0][0]


def _fields(sample: str, delimiter: str) -> list[list[str]]:
    try:
        return list(csv.reader(sample.splitlines(), delimiter=delimiter))
    except csv.Error:
        return []


def sniff(path: Path, kind: str) -> Dialect:
    """The dialect of a file of a known kind, from its first 64 KiB."""
    if kind == "jsonl":
        return Dialect(kind, "JSONEachRow")
    if kind == "parquet":
        return Dialect(kind, "Parquet")

    sample = _head(path)
    delimiter = "\t" if kind == "tsv" else _delimiter(sample)
    rows = _fields(sample, delimiter)
    null = _null_token([value for row in rows[1:] for value in row])
    quoted = any(line.lstrip().startswith('"') for line in sample.splitlines())
    if kind == "tsv" and not quoted:
        # Unquoted TSV: ClickHouse's TabSeparated, with backslash escapes.
        settings: dict[str, str | int] = {}
        if null is not None and null != "\\N":
            settings["format_tsv_null_representation"] = null
        return Dialect(kind, "TabSeparated", settings)

    settings = {"format_csv_delimiter": delimiter}
    if delimiter == "\t":
        # CSV parsing otherwise skips tabs as whitespace around fields.
        settings["input_format_csv_allow_whitespace_or_tab_as_delimiter"] = 1
    if null is not None:
        settings["format_csv_null_representation"] = null
    return Dialect(kind, "CSV", settings)


def _looks_like_header(rows: list[list[str]]) -> bool:
    """For all-text files: a first row of distinct names seen nowhere below.

    ClickHouse tells a header by its types differing from the data's, which
    cannot work when every column is text; a repeated value ("France" in a
    country column) marks the first row as data.
    """
    if len(rows) < 2 or not rows[0]:
        return False
    first = rows[0]
    if len(set(first)) != len(first) or not all(v.strip() for v in first):
        return False
    for index, name in enumerate(first):
        if any(len(row) > index and row[index] == name for row in rows[1:]):
            return False
    return True


def infer(
    backend: Backend, path: Path, dialect: Dialect
) -> tuple[Dialect, list[Column]]:
    """Inferred columns, and the dialect with its header decision made."""
    settings: QuerySettings = {**INFERENCE_SETTINGS, **dialect.settings}
    columns = backend.describe_file(path, dialect.format, settings)
    if not columns:
        raise DatasetRejected("no columns could be inferred")
    if dialect.format not in ("CSV", "TabSeparated"):
        return dialect, columns

    generated = all(_GENERATED_NAME.match(c.name) for c in columns)
    all_text = all(_base(c.type) == "String" for c in columns)
    if generated and all_text:
        # ClickHouse cannot tell a header from data when both are text.
        delimiter = str(dialect.settings.get("format_csv_delimiter", "\t"))
        rows = _fields(_head(path), delimiter)
        if _looks_like_header(rows) and len(rows[0]) == len(columns):
            columns = [Column(n, c.type) for n, c in zip(rows[0], columns, strict=True)]
            generated = False
    if generated:
        return dialect, columns
    named = Dialect(dialect.kind, f"{dialect.format}WithNames", dialect.settings)
    return named, columns


def _base(kind: str) -> str:
    """A type without its Nullable and LowCardinality wrappers."""
    for wrapper in ("Nullable(", "LowCardinality("):
        while kind.startswith(wrapper) and kind.endswith(")"):
            kind = kind[len(wrapper) : -1]
    return kind


def widens(source: str, target: str) -> bool:
    """True when every value of ``source`` type reads losslessly as ``target``."""
    src, dst = _base(source), _base(target)
    if src == dst or dst == "String":
        return True
    if _INTEGER.match(src) and _FLOAT.match(dst):
        return True
    return src == "Date" and dst.startswith("DateTime")


def table_columns(backend: Backend, table: str) -> list[Column] | None:
    """A table's columns, or None when it does not exist."""
    database, _, name = table.partition(".")
    rows = backend.query_json(
        "SELECT name, type FROM system.columns "
        f"WHERE database = {quote(database)} AND table = {quote(name.strip('`'))} "
        "ORDER BY position"
    )
    if not rows:
        return None
    return [Column(str(r["name"]), str(r["type"])) for r in rows]


def plan(table: str, existing: list[Column] | None, inferred: list[Column]) -> Plan:
    """How a file's columns fit its table; DatasetRejected when they do not."""
    names = [c.name for c in inferred]
    if UPLOAD_ID in names:
        raise DatasetRejected(f"column {UPLOAD_ID} is reserved for lineage")
    if len(set(names)) != len(names):
        raise DatasetRejected("the file names a column twice")
    if existing is None:
        return Plan(table, create=True, columns=inferred, added=[])

    held = {c.name: c.type for c in existing}
    columns: list[Column] = []
    added: list[Column] = []
    conflicts: list[str] = []
    for column in inferred:
        kind = held.get(column.name)
        if kind is None:
            added.append(column)
            columns.append(column)
        elif widens(column.type, kind):
            # Parse the file's values straight into the table's type.
            columns.append(Column(column.name, kind))
        else:
            conflicts.append(f"{column.name}: table has {kind}, file has {column.type}")
    if conflicts:
        raise DatasetRejected(
            "incompatible column types (" + "; ".join(conflicts) + ")"
        )
    return Plan(table, create=False, columns=columns, added=added)


def _apply(backend: Backend, plan: Plan) -> None:
    if plan.create:
        body = ", ".join(f"{ident(c.name)} {c.type}" for c in plan.columns)
        # Vertical merges read one column at a time: merging the many parts
        # a large load writes stays within a few MiB per part.
        backend.execute(
            f"CREATE TABLE IF NOT EXISTS {plan.table} "
            f"({body}, {UPLOAD_ID} LowCardinality(String)) "
            f"ENGINE = MergeTree ORDER BY {UPLOAD_ID} "
            "SETTINGS vertical_merge_algorithm_min_rows_to_activate = 0, "
            "vertical_merge_algorithm_min_columns_to_activate = 1"
        )
    for column in plan.added:
        # Added columns are Nullable, so rows loaded earlier read NULL.
        backend.execute(
            f"ALTER TABLE {plan.table} ADD COLUMN IF NOT EXISTS "
            f"{ident(column.name)} {column.type}"
        )


def _rows_of(backend: Backend, table: str, upload_id: str) -> int:
    sql = f"SELECT count() AS n FROM {table} WHERE {UPLOAD_ID} = {quote(upload_id)}"
    return int(backend.query_json(sql)[0]["n"])


def _delete_rows(backend: Backend, table: str, upload_id: str) -> None:
    if _rows_of(backend, table, upload_id):
        backend.execute(f"DELETE FROM {table} WHERE {UPLOAD_ID} = {quote(upload_id)}")


def loaded(backend: Backend, tenant: str, dataset: str, upload_id: str) -> bool:
    """True when this upload's rows are recorded as loaded into the dataset."""
    rows = backend.query_json(
        f"SELECT count() AS n FROM {DATABASE}.dataset_loads FINAL "
        f"WHERE tenant = {quote(tenant)} AND dataset = {quote(dataset)} "
        f"AND upload_id = {quote(upload_id)}"
    )
    return bool(int(rows[0]["n"]))


def load(
    backend: Backend,
    *,
    tenant: str,
    dataset: str,
    upload_id: str,
    filename: str,
    path: Path,
) -> dict[str, Any]:
    """Load one file into its dataset table; return what was recorded."""
    kind = kind_of(filename)
    table = qualified(tenant, dataset)
    dialect, inferred = infer(backend, path, sniff(path, kind))
    load_plan = plan(table, table_columns(backend, table), inferred)
    _apply(backend, load_plan)

    # An attempt that died after inserting left rows: replace, never add.
    _delete_rows(backend, table, upload_id)
    try:
        backend.load_file(
            table,
            path,
            dialect.format,
            load_plan.columns,
            {UPLOAD_ID: upload_id},
            dialect.settings,
        )
    except WarehouseRejected as exc:
        # Blocks inserted before a bad row stay committed: take them out so
        # a refused file leaves no rows behind.
        _delete_rows(backend, table, upload_id)
        raise DatasetRejected(f"cannot load {filename}: {exc}") from exc
    rows = _rows_of(backend, table, upload_id)
    record = {
        "tenant": tenant,
        "dataset": dataset,
        "upload_id": upload_id,
        "table_name": table_name(tenant, dataset),
        "format": dialect.format,
        "rows": rows,
        "bytes": path.stat().st_size,
        "columns": [c.name for c in load_plan.columns],
        "types": [c.type for c in load_plan.columns],
        "added_columns": [c.name for c in load_plan.added],
        "loaded_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
    }
    backend.insert_rows(f"{DATABASE}.dataset_loads", [record])
    log.info(
        "dataset.loaded",
        table=record["table_name"],
        rows=rows,
        format=dialect.format,
        added=record["added_columns"],
    )
    return record
