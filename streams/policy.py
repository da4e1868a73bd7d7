"""Per-tenant policy: what each finding of the deep file checks leads to.

``SLUICE_POLICY_FILE`` names a JSON document::

    {"default": {"office-macros": "reject"},
     "tenants": {"acme": {"active-content": "allow"}}}

Each map overrides finding codes (``streams.inspection.Code``) with
``allow``, ``quarantine`` or ``reject`` on top of the built-in default,
which quarantines every finding. A tenant's map applies over the default
map. Without a file every tenant gets the built-in default. An unknown
code or action in the file is an error at start-up, not a silent allow.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from streams.config import get_settings
from streams.inspection import DEFAULT_POLICY, Action, Code, Finding, Policy, decide


@lru_cache(maxsize=4)
def _load(path: Path | None) -> tuple[Policy, dict[str, Policy]]:
    if path is None:
        return DEFAULT_POLICY, {}
    document = json.loads(path.read_text("utf-8"))
    default = DEFAULT_POLICY.merged(document.get("default", {}))
    tenants = {
        tenant: default.merged(overrides)
        for tenant, overrides in document.get("tenants", {}).items()
    }
    return default, tenants


def policy_for(tenant: str) -> Policy:
    """The policy that applies to one tenant's files."""
    default, tenants = _load(get_settings().policy_file)
    return tenants.get(tenant, default)


def action_for(tenant: str, codes: list[str]) -> Action:
    """The strongest action the tenant's policy takes for these findings."""
    findings = [Finding(Code(code), "") for code in codes]
    return decide(findings, policy_for(tenant))
