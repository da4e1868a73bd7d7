"""Every agent checks, in ``pipeline.process``, that header and record tenant agree."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from streams import codec
from streams.config import Settings
from streams.pipeline import Output, Step, check_tenant, process, tenant_matches


class FakeSender:
    """Collects what an agent sends, by topic short name."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, dict[str, str]]] = []

    async def send(
        self, topic: str, key: bytes, value: bytes, headers: dict[str, str]
    ) -> None:
        self.sent.append((topic, key, value, dict(headers)))


def chunk(tenant: str = "acme") -> dict[str, Any]:
    data = b"hello"
    return {
        "event_id": "u1:0",
        "upload_id": "u1",
        "tenant": tenant,
        "offset": 0,
        "length": len(data),
        "upload_length": len(data),
        "data": data,
        "sha256": hashlib.sha256(data).hexdigest(),
        "filename": "a.txt",
        "metadata": {},
        "produced_at": 0,
    }


def event(record: dict[str, Any], headers: dict[str, str]) -> Any:
    return SimpleNamespace(
        headers=[(k, v.encode()) for k, v in headers.items()],
        message=SimpleNamespace(topic="sluice.chunks", partition=0, offset=7),
        key=b"u1",
        value=codec.encode("Chunk", record),
    )


@pytest.fixture
def handled() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def step(handled: list[dict[str, Any]]) -> Step:
    def handler(record: dict[str, Any], headers: dict[str, str]) -> list[Output]:
        handled.append(record)
        return [Output("files.assembled", b"u1", "Chunk", record)]

    return Step(agent="test", input_schema="Chunk", handler=handler)


@pytest.mark.parametrize(
    ("headers", "record", "expected"),
    [
        ({"tenant": "acme"}, {"tenant": "acme"}, True),
        ({"tenant": "rival"}, {"tenant": "acme"}, False),
        ({}, {"tenant": "acme"}, False),
        ({"tenant": ""}, {"tenant": ""}, False),
        ({"tenant": "acme"}, {}, False),
    ],
)
def test_tenant_matches(
    headers: dict[str, str], record: dict[str, Any], expected: bool
) -> None:
    assert tenant_matches(headers, record) is expected


def test_check_tenant_is_a_validation_error() -> None:
    with pytest.raises(Exception) as caught:
        check_tenant({"tenant": "rival"}, {"tenant": "acme"})
    assert getattr(caught.value, "category", None) == "VALIDATION"


async def test_matching_tenants_are_handled(
    step: Step, handled: list[dict[str, Any]], tmp_path: Path
) -> None:
    sender = FakeSender()

    outcome = await process(
        step, event(chunk(), {"tenant": "acme"}), sender, Settings(home=tmp_path)
    )

    assert outcome == "ok"
    assert len(handled) == 1
    assert [s[0] for s in sender.sent] == ["files.assembled"]


@pytest.mark.parametrize(
    "headers",
    [{"tenant": "rival"}, {}, {"tenant": "acme "}],
    ids=["other-tenant", "no-header", "near-miss"],
)
async def test_mismatched_tenants_are_dead_lettered_unhandled(
    step: Step,
    handled: list[dict[str, Any]],
    tmp_path: Path,
    headers: dict[str, str],
) -> None:
    sender = FakeSender()

    outcome = await process(
        step, event(chunk(), headers), sender, Settings(home=tmp_path)
    )

    assert outcome == "dead-letter-validation"
    assert handled == []
    [(topic, _, value, _)] = sender.sent
    assert topic == "deadletter"
    letter = codec.decode("DeadLetter", value)
    assert letter["category"] == "VALIDATION"
    assert letter["attempts"] == 1
    assert "tenant" in letter["error"]
