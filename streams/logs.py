"""structlog set-up: JSON lines with correlation ids bound per request or event.

Messages are stable event names (``upload.created``, ``chunk.stored``) with
key/value fields. File contents, tokens and personal data are never logged;
file names are logged only as their length and extension.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog


def configure(level: str = "INFO", component: str = "sluice") -> None:
    """Send structlog and stdlib logs to stderr as JSON lines."""
    logging.basicConfig(
        stream=sys.stderr, level=level.upper(), format="%(message)s", force=True
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper())
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(component=component)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Bind fields (correlation_id, upload_id, tenant) for a block's logs."""
    with structlog.contextvars.bound_contextvars(**fields):
        yield


def describe_name(filename: str) -> dict[str, Any]:
    """What logs may say about a file name: its length and extension only."""
    _, dot, ext = filename.rpartition(".")
    return {"name_len": len(filename), "ext": ext.lower()[:10] if dot else ""}
