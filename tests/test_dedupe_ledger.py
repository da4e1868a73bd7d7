"""The dedupe ledger: first upload owns, references counted once each."""

from __future__ import annotations

import json

from agents.dedupe import Ledger


def test_owner_and_reference_counts_survive_replays_and_cache_loss() -> None:
    content: dict[str, str] = {}
    claims: dict[str, str] = {}
    ledger = Ledger(content, claims, cache_size=2)

    assert ledger.claim("acme:aa", "u1") == "u1"
    assert ledger.claim("acme:aa", "u1") == "u1"  # replay: not counted again
    assert ledger.claim("acme:aa", "u2") == "u1"
    ledger.forget_cache()
    assert ledger.claim("acme:aa", "u2") == "u1"  # replay after a rebalance
    assert ledger.claim("acme:aa", "u3") == "u1"

    assert json.loads(content["acme:aa"]) == {"owner": "u1", "refs": 3}
    assert claims == {"u1": "acme:aa", "u2": "acme:aa", "u3": "acme:aa"}


def test_the_cache_is_bounded_and_falls_back_to_the_table() -> None:
    content: dict[str, str] = {}
    ledger = Ledger(content, {}, cache_size=2)
    for index in range(5):
        ledger.claim(f"acme:{index}", f"u{index}")

    assert len(ledger._cache) == 2
    assert ledger.entry("acme:0") == {"owner": "u0", "refs": 1}
