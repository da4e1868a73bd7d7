"""The permission matrix: which roles may take which action, over which tenants.

This module is the one declaration of access in Sluice. The gateway, the
warehouse service and the ``sluice`` command line all ask it, and
``docs/access.md`` is checked against it by the tests.

An action's *scope* says whose data it reaches:

- ``tenant``: the caller's own tenant (the token's ``tenant`` claim).
- ``audit-tenants``: the tenants assigned to an auditor in the token's
  ``audit_tenants`` claim; without the claim, the auditor's own tenant.
- ``platform``: every tenant. Operators and admins run the platform itself
  (dead letters and topics belong to no one tenant), so their token's tenant
  only names where they come from.

Nothing here reads or writes anything: callers authenticate, ask
:func:`authorize`, and audit a :class:`PermissionDenied` themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from streams.auth import ROLES, Principal
from streams.errors import ClientError

__all__ = [
    "CLI_COMMANDS",
    "ENDPOINTS",
    "MATRIX",
    "PUBLIC_ENDPOINTS",
    "SERVICE_KEY_ROLES",
    "Action",
    "Endpoint",
    "PermissionDenied",
    "Rule",
    "Scope",
    "allows",
    "authorize",
    "matrix_markdown",
    "tenants_of",
]


class Action(StrEnum):
    """Everything a caller can ask Sluice to do, by a stable name."""

    UPLOAD_CREATE = "upload.create"
    UPLOAD_WRITE = "upload.write"
    UPLOAD_TERMINATE = "upload.terminate"
    UPLOAD_READ = "upload.read"
    RESULTS_READ = "results.read"
    DATASETS_READ = "datasets.read"
    AUDIT_READ = "audit.read"
    DEADLETTERS_READ = "deadletters.read"
    DEADLETTERS_REPLAY = "deadletters.replay"
    QUARANTINE_READ = "quarantine.read"
    QUARANTINE_RELEASE = "quarantine.release"
    QUARANTINE_DELETE = "quarantine.delete"
    STAGING_SWEEP = "staging.sweep"
    TOPICS_READ = "topics.read"
    TOPICS_APPLY = "topics.apply"
    HEALTH_READ = "health.read"
    TENANTS_READ = "tenants.read"
    KEYS_READ = "keys.read"
    KEYS_CREATE = "keys.create"
    KEYS_REVOKE = "keys.revoke"
    KEYS_ROTATE = "keys.rotate"


class Scope(StrEnum):
    """Whose data an action reaches."""

    TENANT = "tenant"
    AUDIT_TENANTS = "audit-tenants"
    PLATFORM = "platform"


@dataclass(frozen=True)
class Rule:
    """The roles allowed an action, its scope, and what it means."""

    roles: frozenset[str]
    scope: Scope
    summary: str


def _rule(roles: str, scope: Scope, summary: str) -> Rule:
    return Rule(frozenset(roles.split()), scope, summary)


# One row per action. No action alters or deletes audit records: no role,
# admin included, can change what the audit log says.
MATRIX: Final[Mapping[Action, Rule]] = MappingProxyType(
    {
        Action.UPLOAD_CREATE: _rule(
            "uploader", Scope.TENANT, "start an upload (tus POST)"
        ),
        Action.UPLOAD_WRITE: _rule(
            "uploader", Scope.TENANT, "send an upload's bytes (tus PATCH)"
        ),
        Action.UPLOAD_TERMINATE: _rule(
            "uploader", Scope.TENANT, "abandon an upload (tus DELETE)"
        ),
        Action.UPLOAD_READ: _rule(
            "uploader reader",
            Scope.TENANT,
            "an upload's offset, receipt, stage and verdict",
        ),
        Action.RESULTS_READ: _rule(
            "reader",
            Scope.TENANT,
            "query file_results, file_stages and uploads",
        ),
        Action.DATASETS_READ: _rule(
            "reader", Scope.TENANT, "query the tenant's dataset tables"
        ),
        Action.AUDIT_READ: _rule(
            "auditor", Scope.AUDIT_TENANTS, "query audit_log of the assigned tenants"
        ),
        Action.DEADLETTERS_READ: _rule(
            "operator",
            Scope.PLATFORM,
            "list dead letters (never their payload); query dead_letters",
        ),
        Action.DEADLETTERS_REPLAY: _rule(
            "operator", Scope.PLATFORM, "replay dead letters to their topic"
        ),
        Action.QUARANTINE_READ: _rule(
            "operator",
            Scope.PLATFORM,
            "list quarantined files: metadata, never contents",
        ),
        Action.QUARANTINE_RELEASE: _rule(
            "operator", Scope.PLATFORM, "move a quarantined file to clean storage"
        ),
        Action.QUARANTINE_DELETE: _rule(
            "operator", Scope.PLATFORM, "delete a quarantined file"
        ),
        Action.STAGING_SWEEP: _rule(
            "operator", Scope.PLATFORM, "remove abandoned uploads' staging"
        ),
        Action.TOPICS_READ: _rule(
            "operator", Scope.PLATFORM, "list the platform's Kafka topics"
        ),
        Action.TOPICS_APPLY: _rule(
            "operator", Scope.PLATFORM, "create missing platform topics"
        ),
        Action.HEALTH_READ: _rule(
            "operator", Scope.PLATFORM, "component health: Kafka, clamd, warehouse"
        ),
        Action.TENANTS_READ: _rule(
            "admin", Scope.PLATFORM, "list tenants that hold service keys"
        ),
        Action.KEYS_READ: _rule(
            "admin", Scope.PLATFORM, "list service keys (never their secrets)"
        ),
        Action.KEYS_CREATE: _rule(
            "admin", Scope.PLATFORM, "issue a service key for a tenant"
        ),
        Action.KEYS_REVOKE: _rule("admin", Scope.PLATFORM, "revoke a service key"),
        Action.KEYS_ROTATE: _rule(
            "admin", Scope.PLATFORM, "issue a successor to a service key"
        ),
    }
)

# Service keys stand in for producer services, so they never carry the
# platform roles: those belong to people, through the identity provider.
SERVICE_KEY_ROLES: Final = frozenset({"uploader", "reader", "auditor"})


class PermissionDenied(ClientError):
    """The caller's roles do not allow the action (HTTP 403)."""

    status = 403

    def __init__(self, action: Action) -> None:
        super().__init__(f"role not permitted to {action.value}", reason="forbidden")
        self.action = action


def allows(principal: Principal, action: Action) -> bool:
    """Whether any of the principal's roles may take ``action``."""
    return bool(principal.roles & MATRIX[action].roles)


def authorize(principal: Principal, action: Action) -> None:
    """Return if the principal may take ``action``, else raise PermissionDenied."""
    if not allows(principal, action):
        raise PermissionDenied(action)


def tenants_of(principal: Principal, action: Action) -> frozenset[str] | None:
    """The tenants ``action`` reaches for this principal; ``None`` means all.

    An empty set means none: a principal not allowed the action, or an
    auditor assigned no tenant.
    """
    if not allows(principal, action):
        return frozenset()
    scope = MATRIX[action].scope
    if scope is Scope.PLATFORM:
        return None
    if scope is Scope.AUDIT_TENANTS and principal.audit_tenants is not None:
        return principal.audit_tenants
    return frozenset({principal.tenant})


@dataclass(frozen=True)
class Endpoint:
    """One authenticated HTTP endpoint and the action it needs."""

    service: str  # "gateway" or "warehouse"
    method: str
    path: str
    action: Action
    note: str = ""


# Every authenticated endpoint. A query's action depends on the tables it
# reads (streams.warehouse.scope); its row names the first one checked.
ENDPOINTS: Final[tuple[Endpoint, ...]] = (
    Endpoint("gateway", "POST", "/files", Action.UPLOAD_CREATE),
    Endpoint("gateway", "HEAD", "/files/{upload_id}", Action.UPLOAD_READ),
    Endpoint("gateway", "PATCH", "/files/{upload_id}", Action.UPLOAD_WRITE),
    Endpoint("gateway", "DELETE", "/files/{upload_id}", Action.UPLOAD_TERMINATE),
    Endpoint("gateway", "GET", "/v1/uploads/{upload_id}", Action.UPLOAD_READ),
    Endpoint("gateway", "GET", "/v1/uploads/{upload_id}/events", Action.UPLOAD_READ),
    Endpoint("gateway", "GET", "/v1/ops/dead-letters", Action.DEADLETTERS_READ),
    Endpoint(
        "gateway",
        "GET",
        "/v1/ops/dead-letters/{event_id}",
        Action.DEADLETTERS_READ,
        "one letter, its message decoded, bytes replaced by their length",
    ),
    Endpoint(
        "gateway", "POST", "/v1/ops/dead-letters/replay", Action.DEADLETTERS_REPLAY
    ),
    Endpoint("gateway", "GET", "/v1/ops/quarantine", Action.QUARANTINE_READ),
    Endpoint(
        "gateway",
        "POST",
        "/v1/ops/quarantine/{tenant}/{upload_id}/release",
        Action.QUARANTINE_RELEASE,
    ),
    Endpoint(
        "gateway",
        "DELETE",
        "/v1/ops/quarantine/{tenant}/{upload_id}",
        Action.QUARANTINE_DELETE,
    ),
    Endpoint("gateway", "POST", "/v1/ops/staging/sweep", Action.STAGING_SWEEP),
    Endpoint("gateway", "GET", "/v1/ops/health", Action.HEALTH_READ),
    Endpoint("gateway", "GET", "/v1/admin/tenants", Action.TENANTS_READ),
    Endpoint("gateway", "GET", "/v1/admin/keys", Action.KEYS_READ),
    Endpoint("gateway", "POST", "/v1/admin/keys", Action.KEYS_CREATE),
    Endpoint("gateway", "POST", "/v1/admin/keys/{key_id}/revoke", Action.KEYS_REVOKE),
    Endpoint("gateway", "POST", "/v1/admin/keys/{key_id}/rotate", Action.KEYS_ROTATE),
    Endpoint(
        "warehouse",
        "POST",
        "/v1/query",
        Action.RESULTS_READ,
        "results, datasets, audit or dead letters, by the tables read",
    ),
    Endpoint("warehouse", "GET", "/v1/uploads/{upload_id}", Action.UPLOAD_READ),
)

# Open without a token, on purpose: orchestrators' probes and Prometheus
# carry no credentials, and browsers send CORS preflights (OPTIONS) without
# them. None of these returns tenant data.
PUBLIC_ENDPOINTS: Final[tuple[tuple[str, str, str], ...]] = (
    ("gateway", "OPTIONS", "/files"),
    ("gateway", "OPTIONS", "/files/{upload_id}"),
    ("gateway", "GET", "/healthz"),
    ("gateway", "GET", "/readyz"),
    ("gateway", "GET", "/metrics"),
    ("gateway", "GET", "/openapi.json"),
    ("warehouse", "GET", "/healthz"),
    ("warehouse", "GET", "/metrics"),
)

# Each client command of ``sluice`` and the action it needs. The service
# commands (gateway, worker, warehouse) and the development identity
# provider (token, jwks) take no token.
CLI_COMMANDS: Final[Mapping[str, Action]] = MappingProxyType(
    {
        "upload": Action.UPLOAD_CREATE,
        "status": Action.UPLOAD_READ,
        "query": Action.RESULTS_READ,
        "dlq list": Action.DEADLETTERS_READ,
        "dlq show": Action.DEADLETTERS_READ,
        "dlq replay": Action.DEADLETTERS_REPLAY,
        "quarantine list": Action.QUARANTINE_READ,
        "quarantine release": Action.QUARANTINE_RELEASE,
        "quarantine delete": Action.QUARANTINE_DELETE,
        "staging sweep": Action.STAGING_SWEEP,
        "topics list": Action.TOPICS_READ,
        "topics apply": Action.TOPICS_APPLY,
        "health": Action.HEALTH_READ,
        "tenants list": Action.TENANTS_READ,
        "keys list": Action.KEYS_READ,
        "keys create": Action.KEYS_CREATE,
        "keys revoke": Action.KEYS_REVOKE,
        "keys rotate": Action.KEYS_ROTATE,
    }
)

_ROLE_ORDER: Final = ("uploader", "reader", "auditor", "operator", "admin")
if set(_ROLE_ORDER) != ROLES or any(not r.roles <= ROLES for r in MATRIX.values()):
    raise RuntimeError("the permission matrix names a role streams.auth does not")


def matrix_markdown(roles: Iterable[str] = _ROLE_ORDER) -> str:
    """The matrix as a Markdown table, as ``docs/access.md`` shows it."""
    columns = list(roles)
    lines = [
        "| action | " + " | ".join(columns) + " | scope | what it allows |",
        "|---|" + "---|" * len(columns) + "---|---|",
    ]
    for action, rule in MATRIX.items():
        marks = " | ".join("✓" if role in rule.roles else "·" for role in columns)
        lines.append(
            f"| `{action.value}` | {marks} | {rule.scope.value} | {rule.summary} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(matrix_markdown(), end="")
