"""Scoping a caller's SQL to the tenants they may read.

chdb runs as one user, so ClickHouse row policies cannot tell callers
apart. Instead every query a caller sends is checked and wrapped here:

1. ClickHouse's own parser (``EXPLAIN AST``) lists what the query reads.
   Only the platform's registry tables and views, and the caller's own
   dataset tables, may appear; table functions (``file()``, ``url()``,
   ``remote()`` and friends) and every other database are refused.
2. The query runs as ``SELECT * FROM (<query>)`` with ``readonly=1`` and
   ``additional_table_filters`` restricting each registry table to the
   caller's tenants. Filters apply through views and subqueries, and
   ``readonly=1`` stops the query from changing them back.

A refusal is an :class:`~streams.errors.InvalidRequest` naming what was
refused; it never says whether another tenant's table exists.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from streams.errors import InvalidRequest
from streams.warehouse.backend import Backend, quote
from streams.warehouse.schema import DATABASE, DATASETS, TENANT_TABLES

_TABLE = re.compile(r"^\s*TableIdentifier (\S+)")
_TABLE_EXPRESSION = re.compile(r"^(\s*)TableExpression\b")
_FUNCTION = re.compile(r"^(\s*)Function (\w+)")
_READ_STATEMENT = re.compile(r"^\s*(select|with)\b", re.IGNORECASE)


def readable_tables(sql: str, backend: Backend) -> set[str]:
    """Qualified names of the tables a query reads; refuse table functions."""
    try:
        lines = backend.query_text(f"EXPLAIN AST {sql}", "TSVRaw").splitlines()
    except Exception as exc:  # a parse error is the caller's to fix
        raise InvalidRequest(f"cannot parse the query: {exc}", reason="query") from exc

    tables: set[str] = set()
    expression_depth: int | None = None
    for line in lines:
        # A function as the first child of a table expression reads data
        # from somewhere other than a table: file, url, s3, remote, ...
        function = _FUNCTION.match(line)
        if function and expression_depth is not None:
            if len(function.group(1)) > expression_depth:
                raise InvalidRequest(
                    f"table function {function.group(2)}() is not allowed",
                    reason="table-function",
                )
        expression = _TABLE_EXPRESSION.match(line)
        expression_depth = len(expression.group(1)) if expression else None
        table = _TABLE.match(line)
        if table:
            tables.add(table.group(1))
    return tables


def dataset_prefix(tenant: str) -> str:
    return f"{tenant}__"


def scoped_query(sql: str, tenants: Iterable[str], backend: Backend) -> str:
    """The caller's read-only query, restricted to the rows of ``tenants``."""
    allowed_tenants = sorted(set(tenants))
    sql = sql.strip().rstrip(";").strip()
    if not _READ_STATEMENT.match(sql) or ";" in sql:
        raise InvalidRequest("only one SELECT statement is allowed", reason="read-only")
    if not allowed_tenants:
        raise InvalidRequest("no tenant to read", reason="scope")

    for table in readable_tables(sql, backend):
        database, dot, name = table.partition(".")
        if not dot:
            raise InvalidRequest(
                f"name tables with their database ({DATABASE}.… or {DATASETS}.…)",
                reason="unqualified-table",
            )
        if database == DATABASE and name in TENANT_TABLES:
            continue
        if database == DATASETS and any(
            name.startswith(dataset_prefix(t)) for t in allowed_tenants
        ):
            continue
        raise InvalidRequest(f"table {table} cannot be read", reason="table")

    in_scope = ", ".join(quote(t) for t in allowed_tenants)
    filters = ", ".join(
        f"{quote(f'{DATABASE}.{name}')}: {quote(f'tenant IN ({in_scope})')}"
        for name in sorted(TENANT_TABLES)
    )
    return (
        f"SELECT * FROM ({sql}) "
        f"SETTINGS readonly = 1, additional_table_filters = {{{filters}}}"
    )
