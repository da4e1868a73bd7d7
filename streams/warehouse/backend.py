"""One interface over the two ClickHouse engines the warehouse writes to.

:class:`ChdbBackend` runs ClickHouse in this process (chdb) over a data
directory: the embedded default. :class:`ServerBackend` talks to a ClickHouse
server through clickhouse-connect when ``SLUICE_CLICKHOUSE_URL`` is set.
Callers write one dialect of SQL and never learn which engine answers;
:func:`open_backend` picks it from the settings.

Both load a dataset file without holding it in memory: its bytes are
streamed in 1 MiB blocks, into chdb's streaming insert in this process or
over HTTP into the server's ``input()``. Schema inference always runs
on a local file in the ClickHouse engine in this process, so both backends
infer the same types from the same bytes.

This module is also the one place where chdb and clickhouse-connect errors
become Sluice's: a refused statement is :class:`WarehouseRejected` (retrying
cannot help), an unreachable or overloaded server is
:class:`WarehouseUnavailable` (retriable).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from streams.config import Settings
from streams.errors import WarehouseRejected, WarehouseUnavailable

QuerySettings = Mapping[str, str | int | float]

STREAM_BLOCK = 1024 * 1024

# Insert settings that bound the engine's memory while loading a large file
# in-process: blocks of 64 Ki rows (16 MiB at most) instead of 1 Mi rows.
# They trade some speed for a flat memory profile (ops/bench measures it).
CHDB_LOAD_SETTINGS: dict[str, str | int] = {
    "max_insert_block_size": 65536,
    "min_insert_block_size_rows": 65536,
    "min_insert_block_size_bytes": 16 * 1024 * 1024,
}

# Both engines render results alike whatever their version's defaults.
SESSION_SETTINGS: dict[str, int] = {"output_format_json_quote_64bit_integers": 0}

# Server error codes that mean "not now" rather than "never": memory or
# part-count pressure, timeouts, a replica in read-only mode, shutdown.
TRANSIENT_CODES = frozenset({159, 202, 209, 210, 236, 241, 242, 252, 319, 425})


@dataclass(frozen=True)
class Column:
    """A column's name and ClickHouse type."""

    name: str
    type: str


class Backend(Protocol):
    """What the warehouse needs from a ClickHouse engine."""

    kind: str

    def execute(self, sql: str, settings: QuerySettings | None = None) -> None:
        """Run a statement that returns nothing."""
        ...

    def query_json(
        self, sql: str, settings: QuerySettings | None = None
    ) -> list[dict[str, Any]]:
        """Rows of a query as dicts."""
        ...

    def query_text(
        self, sql: str, fmt: str, settings: QuerySettings | None = None
    ) -> str:
        """A query's output rendered in a ClickHouse output format."""
        ...

    def insert_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows given as JSON-serialisable dicts."""
        ...

    def describe_file(
        self, path: Path, fmt: str, settings: QuerySettings | None = None
    ) -> list[Column]:
        """The columns ClickHouse infers for a local file in ``fmt``."""
        ...

    def load_file(
        self,
        table: str,
        path: Path,
        fmt: str,
        columns: Sequence[Column],
        constants: Mapping[str, str],
        settings: QuerySettings | None = None,
    ) -> None:
        """Insert a local file's rows, parsed as ``columns``, plus constants."""
        ...

    def close(self) -> None:
        """Release the engine or connection."""
        ...


def quote(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ident(name: str) -> str:
    """A ClickHouse identifier, backquoted."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def structure(columns: Sequence[Column]) -> str:
    """A table function's structure argument: ``name Type, ...``."""
    return ", ".join(f"{ident(c.name)} {c.type}" for c in columns)


def settings_clause(settings: QuerySettings | None) -> str:
    """`` SETTINGS k = v, ...`` for a query, or nothing."""
    if not settings:
        return ""
    parts = []
    for key, value in settings.items():
        literal = quote(value) if isinstance(value, str) else repr(value)
        parts.append(f"{key} = {literal}")
    return " SETTINGS " + ", ".join(parts)


def _rows(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _json_body(rows: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(json.dumps(row, separators=(",", ":")) for row in rows)


def _insert_select(
    table: str, columns: Sequence[Column], constants: Mapping[str, str], source: str
) -> str:
    names = [ident(c.name) for c in columns]
    targets = ", ".join([*names, *(ident(k) for k in constants)])
    values = ", ".join([*names, *(quote(v) for v in constants.values())])
    return f"{table} ({targets}) SELECT {values} FROM {source}"


def _chdb_columns(text: str) -> list[Column]:
    return [Column(str(r["name"]), str(r["type"])) for r in _rows(text)]


class ChdbBackend:
    """chdb (ClickHouse in-process) over a data directory.

    One lock serialises statements on the session; dataset loads run on a
    second session over the same directory (chdb runs the two concurrently)
    so a long load does not hold back the registry's small inserts.
    """

    kind = "chdb"

    def __init__(self, path: Path) -> None:
        from chdb import session

        path.mkdir(parents=True, exist_ok=True)
        try:
            self._session = session.Session(str(path))
            self._load_session = session.Session(str(path))
        except Exception as exc:
            raise WarehouseUnavailable(f"cannot open chdb at {path}: {exc}") from exc
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        for chdb_session in (self._session, self._load_session):
            for key, value in SESSION_SETTINGS.items():
                chdb_session.query(f"SET {key} = {value}")

    def _run(self, sql: str, fmt: str, *, load: bool = False) -> Any:
        lock, chdb_session = (
            (self._load_lock, self._load_session)
            if load
            else (self._lock, self._session)
        )
        with lock:
            try:
                return chdb_session.query(sql, fmt)
            except Exception as exc:
                # In-process, a failed statement is a refusal of this
                # statement (bad type, bad file), not an outage.
                raise WarehouseRejected(f"query failed: {exc}") from exc

    def execute(self, sql: str, settings: QuerySettings | None = None) -> None:
        self._run(sql + settings_clause(settings), "CSV")

    def query_json(
        self, sql: str, settings: QuerySettings | None = None
    ) -> list[dict[str, Any]]:
        return _rows(self.query_text(sql, "JSONEachRow", settings))

    def query_text(
        self, sql: str, fmt: str, settings: QuerySettings | None = None
    ) -> str:
        result = self._run(sql + settings_clause(settings), fmt)
        return str(result.bytes().decode())

    def insert_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self._run(
                f"INSERT INTO {table} FORMAT JSONEachRow\n{_json_body(rows)}", "CSV"
            )

    def describe_file(
        self, path: Path, fmt: str, settings: QuerySettings | None = None
    ) -> list[Column]:
        sql = f"DESCRIBE file({quote(str(path))}, {quote(fmt)})"
        result = self._run(sql + settings_clause(settings), "JSONEachRow", load=True)
        return _chdb_columns(result.bytes().decode())

    def load_file(
        self,
        table: str,
        path: Path,
        fmt: str,
        columns: Sequence[Column],
        constants: Mapping[str, str],
        settings: QuerySettings | None = None,
    ) -> None:
        names = ", ".join(ident(c.name) for c in columns)
        clause = settings_clause({**CHDB_LOAD_SETTINGS, **(settings or {})})
        with self._load_lock:
            try:
                # chdb streams only plain INSERTs (no INSERT ... SELECT), so
                # constants reach the rows as their columns' defaults. This
                # lock makes the one loading thread the only writer of them.
                for name, value in constants.items():
                    self._load_session.query(
                        f"ALTER TABLE {table} MODIFY COLUMN {ident(name)} "
                        f"DEFAULT {quote(value)}"
                    )
                inserter = self._load_session.send_insert(
                    f"INSERT INTO {table} ({names}){clause}", fmt
                )
                with inserter:
                    for block in _blocks(path):
                        inserter.append(block)
                    inserter.finish()
            except Exception as exc:
                raise WarehouseRejected(f"load failed: {exc}") from exc

    def close(self) -> None:
        with self._lock, self._load_lock:
            self._load_session.close()
            self._session.close()


class ServerBackend:
    """A ClickHouse server over HTTP, through clickhouse-connect.

    The client is shared by threads, so it runs without an HTTP session id
    (a ClickHouse session admits one query at a time).
    """

    kind = "clickhouse"

    def __init__(self, url: str) -> None:
        import clickhouse_connect
        from clickhouse_connect.driver.exceptions import ClickHouseError

        try:
            self._client = clickhouse_connect.get_client(
                dsn=url,
                autogenerate_session_id=False,
                compress=False,
                settings=dict(SESSION_SETTINGS),
            )
        except ClickHouseError as exc:
            raise _translate(exc) from exc
        # "http", or "chdb" when the URL is clickhouse-connect's chdb:// form.
        self.transport = "chdb" if url.startswith("chdb:") else "http"

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        try:
            return getattr(self._client, method)(*args, **kwargs)
        except ClickHouseError as exc:
            raise _translate(exc) from exc

    def execute(self, sql: str, settings: QuerySettings | None = None) -> None:
        self._call("command", sql, settings=dict(settings or {}))

    def query_json(
        self, sql: str, settings: QuerySettings | None = None
    ) -> list[dict[str, Any]]:
        return _rows(self.query_text(sql, "JSONEachRow", settings))

    def query_text(
        self, sql: str, fmt: str, settings: QuerySettings | None = None
    ) -> str:
        body = self._call("raw_query", sql, settings=dict(settings or {}), fmt=fmt)
        return bytes(body).decode()

    def insert_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            body = _json_body(rows).encode()
            self._call("raw_insert", table, None, body, fmt="JSONEachRow")

    def describe_file(
        self, path: Path, fmt: str, settings: QuerySettings | None = None
    ) -> list[Column]:
        return describe_local_file(path, fmt, settings)

    def load_file(
        self,
        table: str,
        path: Path,
        fmt: str,
        columns: Sequence[Column],
        constants: Mapping[str, str],
        settings: QuerySettings | None = None,
    ) -> None:
        # clickhouse-connect sends "INSERT INTO <table> FORMAT <fmt>" with the
        # generator as a chunked body; naming input() in the "table" makes the
        # server add the constants (the upload id) to every streamed row.
        source = f"input({quote(structure(columns))})"
        target = _insert_select(table, columns, constants, source)
        self._call(
            "raw_insert",
            target,
            None,
            _blocks(path),
            settings=dict(settings or {}),
            fmt=fmt,
        )

    def close(self) -> None:
        self._client.close()


def _blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(STREAM_BLOCK):
            yield block


def describe_local_file(
    path: Path, fmt: str, settings: QuerySettings | None = None
) -> list[Column]:
    """Schema inference by the stateless in-process engine (server mode)."""
    import chdb

    sql = f"DESCRIBE file({quote(str(path))}, {quote(fmt)})"
    try:
        result = chdb.query(sql + settings_clause(settings), "JSONEachRow")
    except Exception as exc:
        raise WarehouseRejected(f"cannot read {path.name}: {exc}") from exc
    return _chdb_columns(result.bytes().decode())


def _translate(exc: Exception) -> WarehouseUnavailable | WarehouseRejected:
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    message = str(exc).strip()[:2000]
    if isinstance(exc, OperationalError):
        return WarehouseUnavailable(f"ClickHouse unreachable: {message}")
    if isinstance(exc, DatabaseError) and exc.code in TRANSIENT_CODES:
        return WarehouseUnavailable(f"ClickHouse busy: {message}")
    return WarehouseRejected(f"query failed: {message}")


def open_backend(settings: Settings) -> Backend:
    """The server backend when a ClickHouse URL is set, else embedded chdb."""
    if settings.clickhouse_url:
        return ServerBackend(settings.clickhouse_url)
    return ChdbBackend(settings.chdb_path)
