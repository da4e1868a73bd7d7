"""The error tree every Sluice component raises and catches.

::

    SluiceError
    ├── ClientError            the caller sent something wrong (4xx)
    │   ├── InvalidRequest         400
    │   ├── Unauthenticated        401
    │   ├── NotFound               404 (also another tenant's upload)
    │   ├── Conflict               409
    │   ├── Locked                 423
    │   ├── PayloadTooLarge        413
    │   └── ChecksumMismatch       460
    ├── DependencyUnavailable  Kafka, clamd, storage or warehouse down (retriable)
    │   ├── KafkaUnavailable
    │   ├── ScanUnavailable
    │   │   └── ScanPaused         clamd's circuit breaker is open: wait
    │   ├── StorageUnavailable
    │   └── WarehouseUnavailable
    └── DataError              the data itself is bad (never retried)
        ├── DecodeError            a message that is not a known Avro record
        ├── IntegrityError         chunk checksum, gap or overlap
        └── WarehouseRejected      ClickHouse refused the rows (types, drift)

Agents branch on ``retriable`` and ``category`` rather than on lists of types:
a retriable error is retried with backoff and, when retries run out, goes to
the dead-letter topic under its category like any other failure.
"""

from __future__ import annotations


class SluiceError(Exception):
    """Root of every error Sluice raises on purpose."""

    retriable: bool = False
    category: str = "INTERNAL"  # dead-letter category (DeadLetter.category)
    # Set by the gateway when the failed request had already created an
    # upload: the client resumes it from there (tus creation-with-upload).
    upload_location: str | None = None


class ClientError(SluiceError):
    """The caller sent something wrong; tell them, change nothing."""

    status: int = 400
    category = "VALIDATION"

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class InvalidRequest(ClientError):
    status = 400


class Unauthenticated(ClientError):
    status = 401


class NotFound(ClientError):
    status = 404


class Conflict(ClientError):
    status = 409


class Locked(ClientError):
    status = 423


class PayloadTooLarge(ClientError):
    status = 413


class ChecksumMismatch(ClientError):
    status = 460


class DependencyUnavailable(SluiceError):
    """A dependency is down or slow; the same request may succeed later."""

    retriable = True


class KafkaUnavailable(DependencyUnavailable):
    category = "INTERNAL"


class ScanUnavailable(DependencyUnavailable):
    category = "SCAN_UNAVAILABLE"


class DependencyPaused(DependencyUnavailable):
    """Refused without trying, because a breaker is open; try after a delay."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ScanPaused(DependencyPaused, ScanUnavailable):
    """clamd's circuit breaker is open."""


class StorageUnavailable(DependencyUnavailable):
    category = "STORAGE"


class WarehouseUnavailable(DependencyUnavailable):
    category = "WAREHOUSE"


class DataError(SluiceError):
    """The data is bad; retrying cannot help."""

    category = "VALIDATION"


class DecodeError(DataError):
    category = "DECODE"


class IntegrityError(DataError):
    category = "VALIDATION"


class WarehouseRejected(DataError):
    category = "WAREHOUSE"
