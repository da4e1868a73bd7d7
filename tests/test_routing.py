"""Routing rules: validation, first match wins, tenants kept apart."""

from __future__ import annotations

from typing import Any

import pytest

from streams.routing import parse_rules, route_for

SHA = "ab" + "0" * 62


def stage(**overrides: Any) -> dict[str, Any]:
    base = {
        "tenant": "acme",
        "sha256": SHA,
        "size": 100,
        "detected_mime": "text/csv",
        "metadata": {},
    }
    return {**base, **overrides}


RULES = parse_rules(
    {
        "rules": [
            {
                "match": {"metadata": {"kind": "invoice"}, "max_size": 1000},
                "layout": "files/{tenant}/invoices/{sha2}/{sha256}.{ext}",
                "dataset": "Invoices 2026",
            },
            {"match": {"mime": "text/csv", "min_size": 50}, "dataset": None},
        ]
    }
)


def test_first_matching_rule_decides() -> None:
    invoice = route_for(stage(metadata={"kind": "invoice"}), "csv", "sales", RULES)
    assert invoice.location == f"files/acme/invoices/ab/{SHA}.csv"
    assert invoice.dataset == "invoices_2026"

    plain = route_for(stage(), "csv", "sales", RULES)
    assert plain.location == f"files/acme/sha256/ab/{SHA}"
    assert plain.dataset is None

    small = route_for(stage(size=10), "csv", "sales", RULES)
    assert (small.location, small.dataset) == (f"files/acme/sha256/ab/{SHA}", "sales")


def test_non_tabular_files_never_get_a_dataset() -> None:
    routed = route_for(stage(metadata={"kind": "invoice"}), "pdf", None, RULES)
    assert routed.dataset is None


@pytest.mark.parametrize(
    "layout",
    [
        "files/other/{sha256}",
        "files/{tenant}/by-name",
        "files/{tenant}/../x/{sha256}",
        "files/{tenant}/{upload_id}/{sha256}",
        "quarantine/{tenant}/{sha256}",
        "files/{tenant}/a b/{sha256}",
    ],
)
def test_unsafe_layouts_are_refused(layout: str) -> None:
    with pytest.raises(ValueError, match="routing rule 0"):
        parse_rules({"rules": [{"layout": layout}]})


def test_unknown_match_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="routing rule 0"):
        parse_rules({"rules": [{"match": {"colour": "red"}}]})
