"""Tests for service API keys: issue, verify, revoke, expire, rotate, store."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from streams import service_keys
from streams.auth import AuthenticationError, DevKeys, Principal, TokenVerifier
from streams.config import Settings
from streams.service_keys import (
    DEFAULT_GRACE_S,
    STORE_FILE,
    ServiceKeyStore,
    UnknownServiceKey,
    authenticate,
)

DAY = 24 * 3600


class FakeClock:
    """Wall-clock seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / STORE_FILE


@pytest.fixture
def store(store_path: Path, clock: FakeClock) -> ServiceKeyStore:
    return ServiceKeyStore(store_path, clock=clock)


def assert_refused(store: ServiceKeyStore, api_key: str, reason: str) -> None:
    with pytest.raises(AuthenticationError) as caught:
        store.verify(api_key)
    assert caught.value.reason == reason


def secret_of(api_key: str) -> str:
    return api_key.split("_", 2)[2]


def test_create_then_verify(store: ServiceKeyStore) -> None:
    issued = store.create("acme", ["uploader", "reader"], description="billing feed")

    principal = store.verify(issued.api_key)

    assert principal == Principal(
        subject=f"service:{issued.key.key_id}",
        tenant="acme",
        roles=frozenset({"uploader", "reader"}),
    )


def test_key_format(store: ServiceKeyStore) -> None:
    issued = store.create("acme", ["uploader"])

    match = re.fullmatch(r"sk_([0-9a-f]{16})_([A-Za-z0-9_-]+)", issued.api_key)

    assert match is not None
    assert match.group(1) == issued.key.key_id
    assert len(match.group(2)) >= 43  # 32 random bytes, base64url
    assert issued.api_key not in repr(issued)


def test_wrong_secret_is_refused(store: ServiceKeyStore) -> None:
    issued = store.create("acme", ["uploader"])
    other = store.create("acme", ["uploader"])
    forged = f"sk_{issued.key.key_id}_{secret_of(other.api_key)}"

    assert_refused(store, forged, "invalid-key")


def test_wrong_secret_is_refused_after_a_cached_success(
    store: ServiceKeyStore,
) -> None:
    issued = store.create("acme", ["uploader"])
    store.verify(issued.api_key)
    flipped = issued.api_key[:-1] + ("A" if issued.api_key[-1] != "A" else "B")

    assert_refused(store, flipped, "invalid-key")


def test_repeated_wrong_secrets_stop_costing_scrypt(
    store: ServiceKeyStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = store.create("acme", ["uploader"])
    store.verify(issued.api_key)  # cached, like a live producer's key
    other = store.create("acme", ["uploader"])
    forged = f"sk_{issued.key.key_id}_{secret_of(other.api_key)}"
    derivations = []
    real_derive = service_keys._derive

    def counting_derive(secret: str, params: Any) -> bytes:
        derivations.append(secret)
        return real_derive(secret, params)

    monkeypatch.setattr(service_keys, "_derive", counting_derive)
    for _ in range(8):
        assert_refused(store, forged, "invalid-key")

    assert len(derivations) == 5
    # The holder of the real key is not locked out.
    assert store.verify(issued.api_key).tenant == "acme"
    # After the window, attempts are checked again.
    clock.advance(61)
    assert_refused(store, forged, "invalid-key")
    assert len(derivations) == 6


def test_unknown_key_id_looks_like_a_wrong_secret(store: ServiceKeyStore) -> None:
    issued = store.create("acme", ["uploader"])

    assert_refused(store, f"sk_{'0' * 16}_{secret_of(issued.api_key)}", "invalid-key")


@pytest.mark.parametrize(
    "api_key",
    [
        "sk_",
        "sk_0123456789abcdef",
        "sk_0123456789abcdef_short",
        "sk_0123456789ABCDEF_" + "a" * 43,
        "sk_0123_" + "a" * 43,
        "sk_0123456789abcdef_" + "a" * 42 + "!",
        "pk_0123456789abcdef_" + "a" * 43,
    ],
)
def test_malformed_keys_are_refused(store: ServiceKeyStore, api_key: str) -> None:
    assert_refused(store, api_key, "malformed")


def test_revoked_key_is_refused(store: ServiceKeyStore, clock: FakeClock) -> None:
    issued = store.create("acme", ["uploader"])
    store.verify(issued.api_key)  # cached: revocation must still win

    revoked = store.revoke(issued.key.key_id)
    clock.advance(60)

    assert revoked.revoked_at == int(clock.now) - 60
    assert_refused(store, issued.api_key, "key-revoked")
    # Revoking again keeps the first time.
    assert store.revoke(issued.key.key_id).revoked_at == revoked.revoked_at


def test_revoking_an_unknown_key_raises(store: ServiceKeyStore) -> None:
    with pytest.raises(UnknownServiceKey):
        store.revoke("0123456789abcdef")


def test_expired_key_is_refused(store: ServiceKeyStore, clock: FakeClock) -> None:
    issued = store.create("acme", ["uploader"], ttl_s=3600)

    clock.advance(3599)
    assert store.verify(issued.api_key).tenant == "acme"
    clock.advance(1)

    assert_refused(store, issued.api_key, "key-expired")
    assert store.get(issued.key.key_id).state(clock.now) == "expired"


def test_rotation_keeps_the_old_key_only_for_the_grace_period(
    store: ServiceKeyStore, clock: FakeClock
) -> None:
    old = store.create("acme", ["uploader"], ttl_s=90 * DAY)

    new = store.rotate(old.key.key_id, grace_s=DAY)

    assert new.api_key != old.api_key
    assert (new.key.tenant, new.key.roles) == (old.key.tenant, old.key.roles)
    assert store.verify(new.api_key).subject == f"service:{new.key.key_id}"
    assert store.verify(old.api_key).tenant == "acme"
    assert store.get(old.key.key_id).state(clock.now) == "rotating"
    assert store.get(old.key.key_id).rotated_to == new.key.key_id

    clock.advance(DAY - 1)
    assert store.verify(old.api_key).tenant == "acme"
    clock.advance(1)
    assert_refused(store, old.api_key, "key-expired")
    assert store.verify(new.api_key).tenant == "acme"


def test_grace_never_extends_the_old_keys_life(
    store: ServiceKeyStore, clock: FakeClock
) -> None:
    old = store.create("acme", ["uploader"], ttl_s=3600)

    store.rotate(old.key.key_id, grace_s=DEFAULT_GRACE_S)

    assert store.get(old.key.key_id).expires_at == old.key.expires_at


def test_only_active_keys_can_be_rotated(
    store: ServiceKeyStore, clock: FakeClock
) -> None:
    rotated = store.create("acme", ["uploader"])
    store.rotate(rotated.key.key_id)
    revoked = store.create("acme", ["uploader"])
    store.revoke(revoked.key.key_id)
    expired = store.create("acme", ["uploader"], ttl_s=10)
    clock.advance(10)

    for key_id, state in [
        (rotated.key.key_id, "rotating"),
        (revoked.key.key_id, "revoked"),
        (expired.key.key_id, "expired"),
    ]:
        with pytest.raises(ValueError, match=state):
            store.rotate(key_id)
    with pytest.raises(UnknownServiceKey):
        store.rotate("0123456789abcdef")


def test_store_file_never_holds_a_secret(
    store: ServiceKeyStore, store_path: Path
) -> None:
    first = store.create("acme", ["uploader"])
    second = store.rotate(first.key.key_id)
    store.revoke(second.key.key_id)
    text = store_path.read_text()

    for issued in (first, second):
        assert issued.api_key not in text
        assert secret_of(issued.api_key) not in text
    document = json.loads(text)
    assert set(document["keys"]) == {first.key.key_id, second.key.key_id}
    assert document["keys"][first.key.key_id]["hash"]["kdf"] == "scrypt"


def test_store_files_are_private(store: ServiceKeyStore, store_path: Path) -> None:
    issued = store.create("acme", ["uploader"])
    assert stat.S_IMODE(store_path.stat().st_mode) == 0o600

    store.rotate(issued.key.key_id)
    store.revoke(issued.key.key_id)

    assert stat.S_IMODE(store_path.stat().st_mode) == 0o600
    lock = store_path.with_name(STORE_FILE + ".lock")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert stat.S_IMODE(store_path.parent.stat().st_mode) == 0o700
    leftovers = [p.name for p in store_path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temp files left behind


def test_another_process_sees_a_revocation(
    store: ServiceKeyStore, store_path: Path, clock: FakeClock
) -> None:
    # The gateway's store and the CLI's store are separate objects.
    gateway = ServiceKeyStore(store_path, clock=clock)
    issued = store.create("acme", ["uploader"])
    assert gateway.verify(issued.api_key).tenant == "acme"

    ServiceKeyStore(store_path, clock=clock).revoke(issued.key.key_id)

    assert_refused(gateway, issued.api_key, "key-revoked")


def test_list_filters_by_tenant_oldest_first(
    store: ServiceKeyStore, clock: FakeClock
) -> None:
    first = store.create("acme", ["uploader"])
    clock.advance(1)
    store.create("globex", ["reader"])
    clock.advance(1)
    third = store.create("acme", ["auditor"])

    assert [k.key_id for k in store.list("acme")] == [
        first.key.key_id,
        third.key.key_id,
    ]
    assert len(store.list()) == 3
    assert ServiceKeyStore(Path("/nonexistent/keys.json")).list() == ()


@pytest.mark.parametrize(
    ("tenant", "roles", "ttl_s", "description", "match"),
    [
        ("Acme", ["uploader"], 60, "", "tenant"),
        ("../acme", ["uploader"], 60, "", "tenant"),
        ("acme", [], 60, "", "roles"),
        ("acme", ["root"], 60, "", "roles"),
        ("acme", ["operator"], 60, "", "roles"),  # people's roles, not services'
        ("acme", ["uploader", "admin"], 60, "", "roles"),
        ("acme__x", ["uploader"], 60, "", "tenant"),
        ("acme", ["uploader"], 0, "", "ttl_s"),
        ("acme", ["uploader"], 60, "line\nbreak", "description"),
        ("acme", ["uploader"], 60, "x" * 201, "description"),
    ],
)
def test_create_refuses_bad_input(
    store: ServiceKeyStore,
    store_path: Path,
    tenant: str,
    roles: list[str],
    ttl_s: int,
    description: str,
    match: str,
) -> None:
    with pytest.raises(ValueError, match=match):
        store.create(tenant, roles, ttl_s=ttl_s, description=description)
    assert not store_path.exists()


def test_damaged_store_fails_closed(store: ServiceKeyStore, store_path: Path) -> None:
    issued = store.create("acme", ["uploader"])
    store_path.write_text("{not json")

    with pytest.raises(ValueError, match="service key store"):
        ServiceKeyStore(store_path).verify(issued.api_key)


def test_tampered_hash_parameters_verify_nothing(
    store: ServiceKeyStore, store_path: Path
) -> None:
    issued = store.create("acme", ["uploader"])
    document = json.loads(store_path.read_text())
    document["keys"][issued.key.key_id]["hash"]["n"] = 2**30  # would stall us
    store_path.write_text(json.dumps(document))

    assert_refused(ServiceKeyStore(store_path), issued.api_key, "invalid-key")


# --- The HTTP layer's entry point ---------------------------------------------


@pytest.fixture
def dev_keys(tmp_path: Path) -> DevKeys:
    return DevKeys.load_or_create(tmp_path / "keys")


@pytest.fixture
def verifier(dev_keys: DevKeys) -> TokenVerifier:
    return TokenVerifier(dev_keys.jwks, issuer="sluice-dev", audience="sluice")


def test_authenticate_accepts_a_service_key(
    store: ServiceKeyStore, verifier: TokenVerifier
) -> None:
    issued = store.create("acme", ["uploader"])

    principal = authenticate(f"Bearer {issued.api_key}", verifier, store)

    assert principal.subject == f"service:{issued.key.key_id}"


def test_authenticate_accepts_a_jwt(
    store: ServiceKeyStore, verifier: TokenVerifier, dev_keys: DevKeys
) -> None:
    token = dev_keys.issue(
        "acme", ["reader"], subject="alice", issuer="sluice-dev", audience="sluice"
    )

    principal = authenticate(f"Bearer {token}", verifier, store)

    assert principal == Principal("alice", "acme", frozenset({"reader"}))


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing-token"),
        ("", "missing-token"),
        ("Basic dXNlcjpwYXNz", "malformed"),
        ("Bearer sk_0123456789abcdef_" + "a" * 43, "invalid-key"),
        ("Bearer not-a-jwt", "malformed"),
    ],
)
def test_authenticate_refuses(
    store: ServiceKeyStore, verifier: TokenVerifier, header: str | None, reason: str
) -> None:
    with pytest.raises(AuthenticationError) as caught:
        authenticate(header, verifier, store)
    assert caught.value.reason == reason


def test_authenticate_without_a_store_refuses_service_keys(
    store: ServiceKeyStore, verifier: TokenVerifier
) -> None:
    issued = store.create("acme", ["uploader"])

    with pytest.raises(AuthenticationError) as caught:
        authenticate(f"Bearer {issued.api_key}", verifier, None)
    assert caught.value.reason == "invalid-key"


def test_store_from_settings_lives_under_keys_dir(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)

    assert ServiceKeyStore.from_settings(settings).path == (
        tmp_path / "keys" / "service_keys.json"
    )
