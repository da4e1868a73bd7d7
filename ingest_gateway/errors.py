"""The gateway's client-facing errors beyond ``streams.errors``.

Each has a stable ``reason`` code and a status; the handlers in ``app.py``
turn them into JSON bodies. Errors that tell a client to come back later
carry ``retry_after`` (seconds), sent as ``Retry-After``::

    ClientError
    ├── BodyTimeout          408  the client sent nothing for too long mid-body
    ├── Gone                 410  the upload expired
    ├── IdempotencyMismatch  422  an Idempotency-Key reused for another request
    ├── Busy (Locked)        423  another request holds the upload's lease
    └── TooManyRequests      429  the tenant is over its request rate
    DependencyUnavailable
    ├── Overloaded           503  over the memory or in-flight budget
    └── ShuttingDown         503  the instance stopped; resume from HEAD elsewhere
"""

from __future__ import annotations

from streams.errors import ClientError, DependencyUnavailable, Locked


class BodyTimeout(ClientError):
    status = 408


class Gone(ClientError):
    status = 410


class IdempotencyMismatch(ClientError):
    status = 422


class Busy(Locked):
    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, reason="locked")
        self.retry_after = retry_after


class TooManyRequests(ClientError):
    status = 429

    def __init__(self, message: str, *, retry_after: int, reason: str) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after


class Overloaded(DependencyUnavailable):
    """The gateway itself is at a budget; the same request may pass shortly."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(DependencyUnavailable):
    """This instance is stopping: a body still arriving was cut off."""

    retry_after = 1


class Fenced(Exception):
    """Another writer initialised this upload's transactional id (internal)."""
