"""Declared routing rules: where a clean file goes, and which dataset it feeds.

``SLUICE_ROUTES_FILE`` names a JSON document of rules, tried in order; the
first whose ``match`` holds decides::

    {"rules": [
      {"match": {"tenant": "acme", "mime": "text/csv", "extension": "csv",
                 "min_size": 1, "max_size": 1000000000,
                 "metadata": {"kind": "invoice"}},
       "layout": "files/{tenant}/invoices/{sha2}/{sha256}",
       "dataset": "invoices"}
    ]}

Every ``match`` key is optional (an empty match matches every file).
``layout`` is the object key of the stored bytes; it must start with
``files/{tenant}/`` (tenants never share a place) and contain ``{sha256}``
(content stays addressed by its digest, so duplicates are stored once).
Placeholders: ``{tenant}``, ``{sha256}``, ``{sha2}`` (its first two hex
digits), ``{ext}``. ``dataset`` names the warehouse dataset the file loads
into (tabular files only), ``null`` for none; without it a tabular file
loads into the dataset named after its file. Files no rule matches, and
every file without a rules file, get the default: content-addressed under
``files/{tenant}/sha256/`` and the default dataset.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from streams import storage
from streams.config import get_settings
from streams.names import safe_table_name

PLACEHOLDERS = frozenset({"tenant", "sha256", "sha2", "ext"})
_SAFE_LITERAL = re.compile(r"^[A-Za-z0-9_./{}-]+$")
_DEFAULT = object()


@dataclass(frozen=True)
class Match:
    tenant: str | None = None
    mime: str | None = None
    extension: str | None = None
    min_size: int | None = None
    max_size: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def holds(self, stage: dict[str, Any], extension: str) -> bool:
        size = int(stage["size"])
        return (
            (self.tenant is None or stage["tenant"] == self.tenant)
            and (self.mime is None or stage["detected_mime"] == self.mime)
            and (self.extension is None or extension == self.extension.lower())
            and (self.min_size is None or size >= self.min_size)
            and (self.max_size is None or size <= self.max_size)
            and all(stage["metadata"].get(k) == v for k, v in self.metadata.items())
        )


@dataclass(frozen=True)
class Rule:
    match: Match
    layout: str | None
    dataset: object  # a name, None for no dataset, or _DEFAULT


@dataclass(frozen=True)
class Route:
    """Where one clean file goes."""

    location: str
    dataset: str | None


def _check_layout(layout: str) -> str:
    if not layout.startswith("files/{tenant}/") or "{sha256}" not in layout:
        raise ValueError("a layout starts with files/{tenant}/ and holds {sha256}")
    if not _SAFE_LITERAL.match(layout) or ".." in layout or "//" in layout:
        raise ValueError(f"layout {layout!r} has characters a key cannot hold")
    names = {name for _, name, _, _ in string.Formatter().parse(layout) if name}
    if not names <= PLACEHOLDERS:
        raise ValueError(f"unknown placeholders {sorted(names - PLACEHOLDERS)}")
    return layout


def parse_rules(document: dict[str, Any]) -> tuple[Rule, ...]:
    """Rules from their JSON form; ValueError names the first bad one."""
    rules = []
    for index, raw in enumerate(document.get("rules", [])):
        try:
            match = Match(**raw.get("match", {}))
            layout = raw.get("layout")
            dataset: object = raw["dataset"] if "dataset" in raw else _DEFAULT
            if isinstance(dataset, str):
                dataset = safe_table_name(dataset)
            elif dataset is not None and dataset is not _DEFAULT:
                raise ValueError("dataset is a name or null")
            rules.append(
                Rule(match, _check_layout(layout) if layout else None, dataset)
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"routing rule {index}: {exc}") from exc
    return tuple(rules)


@lru_cache(maxsize=4)
def _rules(path: Path | None) -> tuple[Rule, ...]:
    if path is None:
        return ()
    return parse_rules(json.loads(path.read_text("utf-8")))


def route_for(
    stage: dict[str, Any],
    extension: str,
    default_dataset: str | None,
    rules: tuple[Rule, ...] | None = None,
) -> Route:
    """The place and dataset of a clean file, by the first matching rule."""
    tenant, sha256 = stage["tenant"], stage["sha256"]
    default = Route(storage.content_key(tenant, sha256), default_dataset)
    chosen = _rules(get_settings().routes_file) if rules is None else rules
    for rule in chosen:
        if not rule.match.holds(stage, extension):
            continue
        location = default.location
        if rule.layout is not None:
            location = rule.layout.format(
                tenant=tenant, sha256=sha256, sha2=sha256[:2], ext=extension or "bin"
            )
        dataset = default_dataset if rule.dataset is _DEFAULT else rule.dataset
        if default_dataset is None:
            dataset = None  # only tabular files load into datasets
        return Route(location, dataset if isinstance(dataset, str) else None)
    return default
