"""Scoping a caller's SQL to the tables and tenants their roles may read.

chdb runs as one user, so ClickHouse row policies cannot tell callers
apart. Instead every query a caller sends is checked and wrapped here:

1. ClickHouse's own parser (``EXPLAIN AST``) lists what the query reads.
   Each table must be granted to the caller by the permission matrix
   (:data:`TABLE_ACTIONS`): ``file_results``, ``file_stages`` and the
   views over them (``uploads``, ``file_versions``, ``file_locations``,
   ``scan_results``, ``findings``, ``daily_volume``) need
   ``results.read``; ``audit_log`` and its trails (``audit_by_actor``,
   ``audit_by_target``) need ``audit.read``; ``dead_letters`` needs
   ``deadletters.read``; ``dataset_loads`` and a dataset table
   ``datasets.<tenant>__<name>`` need ``datasets.read`` (a dataset table
   only of the caller's own tenant). Table functions (``file()``, ``url()``,
   ``remote()`` and friends), every other database and every table no
   action names are refused.
2. The query runs as ``SELECT * FROM (<query>)`` with ``readonly=1`` and
   ``additional_table_filters`` restricting each registry table to the rows
   of the tenants its action reaches (none at all for a table not granted).
   Filters apply through views and subqueries, and ``readonly=1`` stops the
   query from changing them back.

A table the caller's roles do not cover is a
:class:`~streams.permissions.PermissionDenied` (403): it depends on the
roles alone. Any other refusal is an :class:`~streams.errors.InvalidRequest`
(400) naming what was refused; it never says whether another tenant's
table exists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from streams.auth import Principal
from streams.errors import InvalidRequest
from streams.permissions import Action, PermissionDenied, allows, tenants_of
from streams.warehouse.backend import Backend, quote
from streams.warehouse.schema import DATABASE, DATASETS, TENANT_TABLES

# The action that grants each registry table or view of DATABASE. A table
# missing here cannot be read by anyone: new tables are closed until named.
TABLE_ACTIONS: Final[Mapping[str, Action]] = MappingProxyType(
    {
        "file_results": Action.RESULTS_READ,
        "file_stages": Action.RESULTS_READ,
        "uploads": Action.RESULTS_READ,
        "file_versions": Action.RESULTS_READ,
        "file_locations": Action.RESULTS_READ,
        "scan_results": Action.RESULTS_READ,
        "findings": Action.RESULTS_READ,
        "daily_volume": Action.RESULTS_READ,
        "dataset_loads": Action.DATASETS_READ,
        "audit_log": Action.AUDIT_READ,
        "audit_by_actor": Action.AUDIT_READ,
        "audit_by_target": Action.AUDIT_READ,
        "dead_letters": Action.DEADLETTERS_READ,
    }
)

# A dataset name starts with a letter (streams.names.safe_table_name), and
# tenants hold no "__", so "<tenant>__<letter>..." names one tenant only.
_DATASET_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Grants:
    """What one caller may read.

    ``tables`` maps each readable registry table to the tenants whose rows
    it shows (``None``: every row); ``dataset_tenants`` are the tenants
    whose dataset tables are readable.
    """

    tables: Mapping[str, frozenset[str] | None]
    dataset_tenants: frozenset[str]


def grants_for(principal: Principal) -> Grants:
    """The tables and tenants the matrix lets ``principal`` read."""
    tables: dict[str, frozenset[str] | None] = {}
    for table, action in TABLE_ACTIONS.items():
        if allows(principal, action):
            tables[table] = tenants_of(principal, action)
    return Grants(
        tables=MappingProxyType(tables),
        dataset_tenants=tenants_of(principal, Action.DATASETS_READ) or frozenset(),
    )


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


def _dataset_owner(name: str, tenants: frozenset[str]) -> str | None:
    for tenant in tenants:
        prefix = dataset_prefix(tenant)
        if name.startswith(prefix) and _DATASET_NAME.fullmatch(name[len(prefix) :]):
            return tenant
    return None


def scoped_query(sql: str, grants: Grants, backend: Backend) -> str:
    """The caller's read-only query, restricted to what ``grants`` allow."""
    sql = sql.strip().rstrip(";").strip()
    if not _READ_STATEMENT.match(sql) or ";" in sql:
        raise InvalidRequest("only one SELECT statement is allowed", reason="read-only")

    tables = readable_tables(sql, backend)
    for table in tables:
        _check_table(table, grants)
    # Reading no table at all is still querying: it needs some read grant.
    if not tables and not grants.tables and not grants.dataset_tenants:
        raise PermissionDenied(Action.RESULTS_READ)

    filters = ", ".join(
        f"{quote(f'{DATABASE}.{name}')}: {quote(_row_filter(grants, name))}"
        for name in sorted(TENANT_TABLES | set(TABLE_ACTIONS))
        if _row_filter(grants, name) != ""
    )
    settings = "readonly = 1"
    if filters:
        settings += f", additional_table_filters = {{{filters}}}"
    return f"SELECT * FROM ({sql}) SETTINGS {settings}"


def _check_table(table: str, grants: Grants) -> None:
    database, dot, name = table.partition(".")
    if not dot:
        raise InvalidRequest(
            f"name tables with their database ({DATABASE}.… or {DATASETS}.…)",
            reason="unqualified-table",
        )

    if database == DATABASE and name in TABLE_ACTIONS:
        if name not in grants.tables:
            raise PermissionDenied(TABLE_ACTIONS[name])
        if grants.tables[name] == frozenset():
            raise InvalidRequest("no tenant to read", reason="scope")
        return

    if database == DATASETS:
        if not grants.dataset_tenants:
            raise PermissionDenied(Action.DATASETS_READ)
        if _dataset_owner(name, grants.dataset_tenants) is not None:
            return

    raise InvalidRequest(f"table {table} cannot be read", reason="table")


def _row_filter(grants: Grants, table: str) -> str:
    """The filter of one registry table: "" for every row, "0" for none."""
    if table not in grants.tables:
        # Not granted, yet a granted view may read it underneath: no rows.
        return "0"
    tenants = grants.tables[table]
    if tenants is None:
        return ""
    if not tenants:
        return "0"
    return f"tenant IN ({', '.join(quote(t) for t in sorted(tenants))})"
