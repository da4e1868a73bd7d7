"""One interface over the ClickHouse engines Sluice can write to."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Protocol

from streams.errors import WarehouseRejected, WarehouseUnavailable


class Backend(Protocol):
    def execute(self, sql: str) -> None: ...
    def query_json(self, sql: str) -> list[dict[str, Any]]: ...
    def query_text(self, sql: str, fmt: str) -> str: ...


class ChdbBackend:
    """chdb (ClickHouse in-process) over a data directory; one lock serialises
    calls because a chdb session is not safe to share across threads."""

    def __init__(self, path: Path) -> None:
        from chdb import session

        path.mkdir(parents=True, exist_ok=True)
        try:
            self._session = session.Session(str(path))
        except Exception as exc:
            raise WarehouseUnavailable(f"cannot open chdb at {path}: {exc}") from exc
        self._lock = threading.Lock()

    def _run(self, sql: str, fmt: str) -> Any:
        with self._lock:
            try:
                return self._session.query(sql, fmt)
            except Exception as exc:
                # In-process, a failed query is a refusal of this query (bad
                # type, bad file), not an outage: retrying cannot help.
                raise WarehouseRejected(f"query failed: {exc}") from exc

    def execute(self, sql: str) -> None:
        self._run(sql, "CSV")

    def query_json(self, sql: str) -> list[dict[str, Any]]:
        text = self._run(sql, "JSONEachRow").bytes().decode()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def query_text(self, sql: str, fmt: str) -> str:
        result = self._run(sql, fmt)
        return str(result.bytes().decode())

    def close(self) -> None:
        with self._lock:
            self._session.close()


def quote(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ident(name: str) -> str:
    """A ClickHouse identifier, backquoted."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
