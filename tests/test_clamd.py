"""The clamd client fails closed: replies, timeouts and the circuit breaker."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from streams.clamd import CircuitBreaker, Clamd, parse_reply
from streams.errors import ScanUnavailable


@pytest.mark.parametrize(
    ("reply", "status", "signature"),
    [
        ("stream: OK", "CLEAN", None),
        ("stream: Eicar-Signature FOUND", "INFECTED", "Eicar-Signature"),
        (
            "stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND",
            "SUSPICIOUS",
            "Heuristics.Limits.Exceeded.MaxFileSize",
        ),
        ("stream: Heuristics.Encrypted.Zip FOUND", "SUSPICIOUS", None),
        (
            "INSTREAM size limit exceeded. ERROR",
            "SUSPICIOUS",
            "Sluice.Limits.StreamMaxLength",
        ),
    ],
)
def test_replies_map_to_verdicts(
    reply: str, status: str, signature: str | None
) -> None:
    parsed = parse_reply(reply)
    assert parsed.status == status
    if signature is not None:
        assert parsed.signature == signature


@pytest.mark.parametrize("reply", ["", "stream: ERROR", "UNKNOWN COMMAND", "stream:"])
def test_anything_else_is_no_verdict(reply: str) -> None:
    with pytest.raises(ScanUnavailable):
        parse_reply(reply)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_fails_fast_and_closes_after_a_good_trial() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, reset_s=5, clock=clock)
    calls = []

    def failing() -> str:
        calls.append("fail")
        raise ScanUnavailable("down")

    for _ in range(2):
        with pytest.raises(ScanUnavailable):
            breaker.call(failing)
    assert breaker.is_open

    with pytest.raises(ScanUnavailable, match="breaker is open"):
        breaker.call(lambda: "never called")
    assert calls == ["fail", "fail"]

    clock.now += 5
    assert breaker.call(lambda: "ok") == "ok"
    assert not breaker.is_open


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts and never answers: clamd hung."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_a_hung_clamd_times_out_as_unavailable(silent_server: int) -> None:
    client = Clamd("127.0.0.1", silent_server, timeout_s=0.3)
    with pytest.raises(ScanUnavailable):
        client.scan(iter([b"data"]))


def test_an_unreachable_clamd_opens_the_breaker() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again: nothing listens there
    client = Clamd("127.0.0.1", port, timeout_s=1, breaker=CircuitBreaker(2, 60))
    for _ in range(2):
        with pytest.raises(ScanUnavailable, match="unreachable"):
            client.version()
    with pytest.raises(ScanUnavailable, match="breaker is open"):
        client.scan(iter([b"never sent"]))
