"""Access control at the HTTP door: authenticate, authorise, audit.

The gateway and the warehouse service each hold one :class:`Guard`. A
handler's preamble is ``principal = await guard.authorize(request, action)``:

- the ``Authorization`` header is verified as a JWT or a service key, in a
  worker thread (a JWKS fetch or a first scrypt blocks);
- a refused credential is audited and answers 401 with ``WWW-Authenticate``,
  except when the key set is unreachable: that is our outage, so it answers
  503 with ``Retry-After`` and tus clients retry instead of giving up;
- the permission matrix (:mod:`streams.permissions`) is asked, and a denial
  is audited and answers 403.

Privileged actions are audited by their handlers through :meth:`Guard.record`,
and refusals a handler decides itself (another tenant's upload, another
tenant's dataset table) through :meth:`Guard.audit_denial`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from starlette.requests import Request

from streams import audit, service_keys
from streams.audit import AuditLog
from streams.auth import PLATFORM_TENANT, AuthenticationError, Principal, TokenVerifier
from streams.config import Settings
from streams.errors import DependencyUnavailable, Unauthenticated
from streams.logs import get_logger
from streams.permissions import Action, PermissionDenied, allows
from streams.service_keys import ServiceKeyStore

__all__ = ["Guard", "correlation_id_of", "www_authenticate"]

log = get_logger(__name__)

# A privileged action's audit event is acknowledged before the handler
# answers, unless Kafka takes longer than this (see streams.audit).
RECORD_WAIT_S = 5.0


class Guard:
    """Verifies credentials, checks the matrix and audits, for one service."""

    def __init__(
        self,
        verifier: TokenVerifier,
        keys: ServiceKeyStore | None,
        audit_log: AuditLog,
    ) -> None:
        self.verifier = verifier
        self.keys = keys
        self.audit = audit_log

    @classmethod
    def from_settings(cls, settings: Settings) -> Guard:
        """The guard for the configured key set, service keys and audit topic."""
        return cls(
            TokenVerifier.from_settings(settings),
            ServiceKeyStore.from_settings(settings),
            AuditLog(settings),
        )

    async def authenticate(self, request: Request) -> Principal:
        """The request's verified principal; refusals are audited."""
        header = request.headers.get("authorization")
        try:
            return await asyncio.to_thread(
                service_keys.authenticate, header, self.verifier, self.keys
            )
        except AuthenticationError as exc:
            self._refused(request, exc)
            if exc.retriable:
                raise DependencyUnavailable(str(exc)) from exc
            raise Unauthenticated(str(exc), reason=exc.reason) from exc

    async def authorize(self, request: Request, action: Action) -> Principal:
        """The request's principal, if the matrix allows it ``action``."""
        principal = await self.authenticate(request)
        if not allows(principal, action):
            raise self.denied(request, principal, action)
        return principal

    def denied(
        self,
        request: Request,
        principal: Principal,
        action: Action,
        detail: Mapping[str, object] | None = None,
    ) -> PermissionDenied:
        """Audit a denial by the matrix and return the error to raise."""
        self.audit_denial(
            request,
            principal,
            action="permission.denied",
            target=action.value,
            tenant=principal.tenant,
            detail=detail,
        )
        return PermissionDenied(action)

    def audit_denial(
        self,
        request: Request,
        principal: Principal,
        *,
        action: str,
        target: str,
        tenant: str,
        detail: Mapping[str, object] | None = None,
    ) -> None:
        """Audit a refused request of ``principal`` in ``tenant``'s log."""
        log.info("access.denied", action=action, target=target)
        self.audit.record(
            audit.audit_event(
                tenant=tenant,
                actor=principal.subject,
                action=action,
                target=target,
                outcome=audit.DENIED,
                correlation_id=correlation_id_of(request),
                detail={
                    "method": request.method,
                    "path": request.url.path,
                    "roles": ",".join(sorted(principal.roles)),
                    "remote": _remote(request),
                    "actor_tenant": principal.tenant,
                    **(detail or {}),
                },
            )
        )

    async def record(
        self,
        request: Request,
        principal: Principal,
        *,
        action: str,
        tenant: str,
        target: str,
        outcome: str = audit.SUCCESS,
        detail: Mapping[str, object] | None = None,
    ) -> None:
        """Audit a privileged action, waiting (bounded) for Kafka's ack."""
        event = audit.audit_event(
            tenant=tenant,
            actor=principal.subject,
            action=action,
            target=target,
            outcome=outcome,
            correlation_id=correlation_id_of(request),
            detail={"actor_tenant": principal.tenant, **(detail or {})},
        )
        await asyncio.to_thread(self.audit.record, event, wait_s=RECORD_WAIT_S)

    def _refused(self, request: Request, exc: AuthenticationError) -> None:
        log.info("auth.refused", reason=exc.reason, path=request.url.path)
        self.audit.record(
            audit.audit_event(
                tenant=PLATFORM_TENANT,
                actor=audit.ANONYMOUS,
                action="auth.failed",
                target=f"{request.method} {request.url.path}",
                outcome=audit.DENIED,
                correlation_id=correlation_id_of(request),
                detail={"reason": exc.reason, "remote": _remote(request)},
            )
        )

    def close(self) -> None:
        """Deliver queued audit events."""
        self.audit.close()


def www_authenticate(reason: str) -> str:
    """The ``WWW-Authenticate`` value of a 401 (RFC 6750 section 3)."""
    # No credential gets the bare challenge; a refused one names the error
    # class only: the reason code is in the JSON body, the token nowhere.
    if reason == "missing-token":
        return 'Bearer realm="sluice"'
    return 'Bearer realm="sluice", error="invalid_token"'


def correlation_id_of(request: Request) -> str:
    """The request's correlation id, fixed on first use."""
    cached = getattr(request.state, "correlation_id", None)
    if isinstance(cached, str):
        return cached
    value = audit.correlation_id(request.headers.get("x-correlation-id"))
    request.state.correlation_id = value
    return value


def _remote(request: Request) -> str:
    return request.client.host if request.client is not None else ""
