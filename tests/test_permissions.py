"""The permission matrix: its content, its scopes, and that it covers everything.

The expected matrix is written out here a second time, by hand, as the
specification: a change to ``streams.permissions.MATRIX`` must be made in
both places, on purpose.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.routing import Mount, Route

from ingest_gateway import app as gateway_module
from ingest_gateway.app import create_app as gateway_app
from streams.auth import ROLES, Principal
from streams.cli import build_parser
from streams.config import Settings
from streams.permissions import (
    CLI_COMMANDS,
    ENDPOINTS,
    MATRIX,
    PUBLIC_ENDPOINTS,
    Action,
    PermissionDenied,
    allows,
    authorize,
    matrix_markdown,
    tenants_of,
)
from streams.warehouse.service import create_app as warehouse_app

REPO = Path(__file__).resolve().parents[1]

# action -> (roles allowed, scope): the specification.
EXPECTED: dict[str, tuple[set[str], str]] = {
    "upload.create": ({"uploader"}, "tenant"),
    "upload.write": ({"uploader"}, "tenant"),
    "upload.terminate": ({"uploader"}, "tenant"),
    "upload.read": ({"uploader", "reader"}, "tenant"),
    "results.read": ({"reader"}, "tenant"),
    "datasets.read": ({"reader"}, "tenant"),
    "audit.read": ({"auditor"}, "audit-tenants"),
    "deadletters.read": ({"operator"}, "platform"),
    "deadletters.replay": ({"operator"}, "platform"),
    "quarantine.read": ({"operator"}, "platform"),
    "quarantine.release": ({"operator"}, "platform"),
    "quarantine.delete": ({"operator"}, "platform"),
    "staging.sweep": ({"operator"}, "platform"),
    "topics.read": ({"operator"}, "platform"),
    "topics.apply": ({"operator"}, "platform"),
    "health.read": ({"operator"}, "platform"),
    "tenants.read": ({"admin"}, "platform"),
    "keys.read": ({"admin"}, "platform"),
    "keys.create": ({"admin"}, "platform"),
    "keys.revoke": ({"admin"}, "platform"),
    "keys.rotate": ({"admin"}, "platform"),
}

# produce writes to Kafka directly: Kafka's ACLs guard it, not tokens.
SERVICE_COMMANDS = {"gateway", "worker", "warehouse", "token", "jwks", "produce"}


def principal(*roles: str, tenant: str = "acme", **extra: object) -> Principal:
    return Principal(f"user-{tenant}", tenant, frozenset(roles), **extra)  # type: ignore[arg-type]


def test_the_matrix_is_the_specification() -> None:
    actual = {
        action.value: (set(rule.roles), rule.scope.value)
        for action, rule in MATRIX.items()
    }

    assert actual == EXPECTED
    assert set(MATRIX) == set(Action)


@pytest.mark.parametrize("role", sorted(ROLES))
@pytest.mark.parametrize("action", list(Action), ids=str)
def test_allows_follows_the_matrix(role: str, action: Action) -> None:
    caller = principal(role)
    expected = role in EXPECTED[action.value][0]

    assert allows(caller, action) is expected
    if expected:
        authorize(caller, action)
    else:
        with pytest.raises(PermissionDenied) as denied:
            authorize(caller, action)
        assert denied.value.status == 403
        assert denied.value.action is action


def test_no_role_can_change_audit_records() -> None:
    assert not [a for a in Action if a.value.startswith("audit.") and a != "audit.read"]
    assert "admin" not in MATRIX[Action.AUDIT_READ].roles


def test_admins_and_auditors_cannot_upload_or_read_data() -> None:
    for role in ("admin", "auditor", "operator"):
        for action in (
            Action.UPLOAD_CREATE,
            Action.UPLOAD_WRITE,
            Action.UPLOAD_READ,
            Action.RESULTS_READ,
            Action.DATASETS_READ,
        ):
            assert not allows(principal(role), action), (role, action)


def test_roles_add_up() -> None:
    both = principal("uploader", "auditor")

    assert allows(both, Action.UPLOAD_CREATE)
    assert allows(both, Action.AUDIT_READ)
    assert not allows(both, Action.KEYS_CREATE)


def test_tenant_scope_is_the_callers_tenant() -> None:
    assert tenants_of(principal("reader"), Action.RESULTS_READ) == {"acme"}
    assert tenants_of(principal("uploader"), Action.RESULTS_READ) == frozenset()


def test_auditors_audit_their_assigned_tenants() -> None:
    assigned = principal("auditor", audit_tenants=frozenset({"rival", "_platform"}))
    unassigned = principal("auditor")
    nothing = principal("auditor", audit_tenants=frozenset())

    assert tenants_of(assigned, Action.AUDIT_READ) == {"rival", "_platform"}
    assert tenants_of(unassigned, Action.AUDIT_READ) == {"acme"}
    assert tenants_of(nothing, Action.AUDIT_READ) == frozenset()
    # The claim widens audit only, never data.
    assert tenants_of(assigned, Action.RESULTS_READ) == frozenset()


def test_platform_roles_reach_every_tenant() -> None:
    assert tenants_of(principal("operator"), Action.DEADLETTERS_READ) is None
    assert tenants_of(principal("admin"), Action.KEYS_CREATE) is None


def test_docs_show_the_matrix() -> None:
    docs = (REPO / "docs" / "access.md").read_text()

    assert matrix_markdown() in docs
    assert "docs/access.md" in (REPO / "README.md").read_text()


def _routes(app: object) -> set[tuple[str, str]]:
    found = set()
    for route in app.routes:  # type: ignore[attr-defined]
        if isinstance(route, Mount):
            found.add(("GET", route.path))
        elif isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD" or route.path.startswith("/files/"):
                    found.add((method, route.path))
    return found


def test_every_gateway_and_warehouse_route_is_declared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path)
    # The route table only: no Kafka clients for a gateway that never starts.
    monkeypatch.setattr(gateway_module, "Gateway", lambda settings: None)
    declared = {(e.service, e.method, e.path) for e in ENDPOINTS} | set(
        PUBLIC_ENDPOINTS
    )

    routes = {("gateway", m, p) for m, p in _routes(gateway_app(settings))}
    routes |= {("warehouse", m, p) for m, p in _routes(warehouse_app(settings))}

    # Starlette answers HEAD for every GET route; only tus HEAD is ours.
    assert routes == declared


def test_every_client_command_names_its_action() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands: set[str] = set()
    for name, command in sub.choices.items():  # type: ignore[union-attr]
        nested = [a for a in command._actions if a.dest == "action"]
        if name in SERVICE_COMMANDS:
            continue
        if not nested:
            commands.add(name)
            continue
        choices = nested[0].choices
        assert choices is not None
        commands |= {f"{name} {choice}" for choice in choices}

    assert commands == set(CLI_COMMANDS)


def test_matrix_markdown_has_a_row_per_action() -> None:
    rows = [line for line in matrix_markdown().splitlines() if line.startswith("| `")]

    assert len(rows) == len(Action)
    assert all(re.search(r"\| (✓|·) \|", row) for row in rows)
