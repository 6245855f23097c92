"""The StateStore contract: every test runs against MemoryStore and the real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from twofa_middleware import keys
from twofa_middleware.decision import VerificationState
from twofa_middleware.errors import ConfigurationError
from twofa_middleware.store import MemoryStore, StateStore, StoredCode, TotpRecord, UserTrust

from .conftest import Backend

P, U = "acme", "alice"
TAG = keys.user_tag(P, U)
NOW = 1_700_000_000.0
DAY = 86_400.0


# --- trust: read_state, record_verification, user_trust, revoke_trust --------


async def test_unknown_user_has_no_state(store: StateStore) -> None:
    assert await store.read_state(P, U, "dev", "10.0.0.1") == VerificationState()


async def test_read_state_returns_what_record_verification_wrote(store: StateStore) -> None:
    await store.record_verification(P, U, "dev", "10.0.0.1", NOW, DAY)
    await store.record_verification(P, U, "dev2", "10.0.0.2", NOW + 5, DAY)

    assert await store.read_state(P, U, "dev", "10.0.0.1") == VerificationState(
        device_verified_at=NOW, ip_verified_at=NOW, user_verified_at=NOW + 5
    )
    assert await store.read_state(P, U, "other-dev", "10.9.9.9") == VerificationState(
        device_verified_at=None, ip_verified_at=None, user_verified_at=NOW + 5
    )
    assert await store.read_state(P, U, None, None) == VerificationState(user_verified_at=NOW + 5)
    # Another user and another portal see nothing.
    assert await store.read_state(P, "bob", "dev", "10.0.0.1") == VerificationState()
    assert await store.read_state("other", U, "dev", "10.0.0.1") == VerificationState()


async def test_record_without_device_or_ip_marks_only_the_user(store: StateStore) -> None:
    await store.record_verification(P, U, None, None, NOW, DAY)

    trust = await store.user_trust(P, U)
    assert (trust.user_verified_at, trust.devices, trust.ips) == (NOW, {}, {})


async def test_a_rotated_device_replaces_the_one_it_came_from(store: StateStore) -> None:
    await store.record_verification(P, U, "old", "ip", NOW, DAY)
    await store.record_verification(P, U, "other-browser", "ip", NOW + 1, DAY)
    await store.record_verification(P, U, "new", "ip", NOW + 2, DAY, replaces="old")

    trust = await store.user_trust(P, U)
    assert trust.devices == {"other-browser": NOW + 1, "new": NOW + 2}
    assert (await store.read_state(P, U, "old", "ip")).device_verified_at is None
    # Replacing a device with itself keeps it.
    await store.record_verification(P, U, "new", "ip", NOW + 3, DAY, replaces="new")
    assert (await store.user_trust(P, U)).devices == {"other-browser": NOW + 1, "new": NOW + 3}


async def test_timestamps_keep_fractions(store: StateStore) -> None:
    await store.record_verification(P, U, "dev", "ip", NOW + 0.125, DAY)

    assert (await store.read_state(P, U, "dev", "ip")).device_verified_at == NOW + 0.125


async def test_recording_again_refreshes_instead_of_adding(backend: Backend) -> None:
    store = backend.make(max_ips_per_user=2)
    await store.record_verification(P, U, "dev", "ip-a", NOW, DAY)
    await store.record_verification(P, U, "dev", "ip-b", NOW + 1, DAY)
    await store.record_verification(P, U, "dev", "ip-a", NOW + 2, DAY)

    trust = await store.user_trust(P, U)
    assert trust.ips == {"ip-a": NOW + 2, "ip-b": NOW + 1}
    assert trust.devices == {"dev": NOW + 2}


async def test_ip_list_is_bounded_and_drops_the_oldest(backend: Backend) -> None:
    store = backend.make(max_ips_per_user=3)
    # Recorded out of time order, so "oldest" must mean the timestamp, not insertion.
    for ip, at in [("ip-3", NOW + 3), ("ip-1", NOW + 1), ("ip-2", NOW + 2), ("ip-4", NOW + 4)]:
        await store.record_verification(P, U, "dev", ip, at, DAY)
    await store.record_verification(P, U, "dev", "ip-5", NOW + 5, DAY)

    assert (await store.user_trust(P, U)).ips == {
        "ip-3": NOW + 3,
        "ip-4": NOW + 4,
        "ip-5": NOW + 5,
    }
    assert (await store.read_state(P, U, "dev", "ip-1")).ip_verified_at is None


async def test_device_list_is_bounded_and_drops_the_oldest(backend: Backend) -> None:
    store = backend.make(max_devices_per_user=2)
    for i in range(1, 5):
        await store.record_verification(P, U, f"dev-{i}", "ip", NOW + i, DAY)

    trust = await store.user_trust(P, U)
    assert trust.devices == {"dev-3": NOW + 3, "dev-4": NOW + 4}
    assert trust.ips == {"ip": NOW + 4}


async def test_the_entry_just_recorded_survives_a_lagging_clock(backend: Backend) -> None:
    store = backend.make(max_ips_per_user=2, max_devices_per_user=2)
    await store.record_verification(P, U, "dev-a", "ip-a", NOW + 10, DAY)
    await store.record_verification(P, U, "dev-b", "ip-b", NOW + 20, DAY)
    # A worker whose clock is behind records an older timestamp than the others.
    await store.record_verification(P, U, "dev-c", "ip-c", NOW, DAY)

    trust = await store.user_trust(P, U)
    assert trust.ips == {"ip-b": NOW + 20, "ip-c": NOW}
    assert trust.devices == {"dev-b": NOW + 20, "dev-c": NOW}


async def test_trust_expires_after_the_retention(backend: Backend) -> None:
    store = backend.make()

    async def trusted() -> bool:
        return (await store.read_state(P, U, "dev", "ip")).device_verified_at is not None

    await store.record_verification(P, U, "dev", "ip", NOW, 10 * DAY)
    # Each verification sets the retention anew, even a shorter one.
    await store.record_verification(P, U, "dev", "ip", NOW, 2 * DAY)
    await backend.assert_expires(keys.user_key(P, U, "trust"), 2 * DAY, trusted)
    if backend.raw is None:
        assert await store.user_trust(P, U) == UserTrust(None, {}, {})


async def test_user_trust_lists_devices_and_ips(store: StateStore) -> None:
    await store.record_verification(P, U, "dev-1", "ip-1", NOW, DAY)
    await store.record_verification(P, U, "dev-2", "ip-1", NOW + 1, DAY)

    trust = await store.user_trust(P, U)
    assert trust.user_verified_at == NOW + 1
    assert trust.devices == {"dev-1": NOW, "dev-2": NOW + 1}
    assert trust.ips == {"ip-1": NOW + 1}


async def test_revoke_trust_forgets_devices_ips_and_user_only(store: StateStore) -> None:
    await store.record_verification(P, U, "dev", "ip", NOW, DAY)
    await store.record_verification(P, "bob", "dev", "ip", NOW, DAY)
    await store.set_recovery_codes(P, U, [b"r1"])

    await store.revoke_trust(P, U)

    assert await store.read_state(P, U, "dev", "ip") == VerificationState()
    trust = await store.user_trust(P, U)
    assert (trust.user_verified_at, trust.devices, trust.ips) == (None, {}, {})
    assert (await store.read_state(P, "bob", "dev", "ip")).device_verified_at == NOW
    assert await store.count_recovery_codes(P, U) == 1


# --- TOTP ---------------------------------------------------------------------


async def test_totp_set_get_delete(store: StateStore) -> None:
    assert await store.get_totp(P, U) is None

    await store.set_totp(P, U, TotpRecord(sealed_seed=b"\x00sealed\xff", confirmed=False))
    assert await store.get_totp(P, U) == TotpRecord(b"\x00sealed\xff", False)

    await store.set_totp(P, U, TotpRecord(sealed_seed=b"\x00sealed\xff", confirmed=True))
    assert await store.get_totp(P, U) == TotpRecord(b"\x00sealed\xff", True)
    assert await store.get_totp(P, "bob") is None

    await store.delete_totp(P, U)
    assert await store.get_totp(P, U) is None


async def test_totp_steps_are_accepted_only_when_later(store: StateStore) -> None:
    assert await store.use_totp_step(P, U, 1000) is True
    assert await store.use_totp_step(P, U, 1000) is False  # the same code again
    assert await store.use_totp_step(P, U, 999) is False  # an older code in the window
    assert await store.use_totp_step(P, U, 1001) is True
    assert await store.use_totp_step(P, "bob", 1000) is True  # per user


async def test_rewriting_the_totp_record_keeps_the_used_step(store: StateStore) -> None:
    await store.set_totp(P, U, TotpRecord(b"seed", confirmed=False))
    assert await store.use_totp_step(P, U, 1000) is True
    await store.set_totp(P, U, TotpRecord(b"seed", confirmed=True))

    assert await store.use_totp_step(P, U, 1000) is False


async def test_deleting_the_totp_forgets_the_used_step(store: StateStore) -> None:
    await store.set_totp(P, U, TotpRecord(b"seed", confirmed=True))
    assert await store.use_totp_step(P, U, 1000) is True

    await store.delete_totp(P, U)

    assert await store.use_totp_step(P, U, 1000) is True


async def test_concurrent_uses_of_one_totp_step_accept_exactly_one(store: StateStore) -> None:
    results = await asyncio.gather(*(store.use_totp_step(P, U, 1000) for _ in range(20)))

    assert results.count(True) == 1


# --- one-time codes -----------------------------------------------------------


async def test_code_put_and_get(store: StateStore) -> None:
    assert await store.get_code(P, U, "login") is None

    await store.put_code(P, U, "login", StoredCode(b"\x01digest\x00", NOW + 0.5), 300)

    assert await store.get_code(P, U, "login") == StoredCode(b"\x01digest\x00", NOW + 0.5)
    assert await store.get_code(P, U, "enroll") is None
    assert await store.get_code(P, "bob", "login") is None


async def test_a_wrong_digest_does_not_consume_the_code(store: StateStore) -> None:
    await store.put_code(P, U, "login", StoredCode(b"right", NOW), 300)

    assert await store.consume_code(P, U, "login", b"wrong") is False
    assert await store.get_code(P, U, "login") == StoredCode(b"right", NOW)


async def test_the_right_digest_consumes_the_code_once(store: StateStore) -> None:
    await store.put_code(P, U, "login", StoredCode(b"right", NOW), 300)

    assert await store.consume_code(P, U, "login", b"right") is True
    assert await store.consume_code(P, U, "login", b"right") is False
    assert await store.get_code(P, U, "login") is None


async def test_a_new_code_replaces_the_old_one(store: StateStore) -> None:
    await store.put_code(P, U, "login", StoredCode(b"old", NOW), 300)
    await store.put_code(P, U, "login", StoredCode(b"new", NOW + 60), 300)

    assert await store.get_code(P, U, "login") == StoredCode(b"new", NOW + 60)
    assert await store.consume_code(P, U, "login", b"old") is False
    assert await store.consume_code(P, U, "login", b"new") is True


async def test_codes_of_different_purposes_are_independent(store: StateStore) -> None:
    await store.put_code(P, U, "login", StoredCode(b"a", NOW), 300)
    await store.put_code(P, U, "enroll", StoredCode(b"b", NOW), 300)

    assert await store.consume_code(P, U, "login", b"b") is False
    assert await store.consume_code(P, U, "login", b"a") is True
    assert await store.get_code(P, U, "enroll") == StoredCode(b"b", NOW)


async def test_a_code_expires_after_its_ttl(backend: Backend) -> None:
    store = backend.make()

    async def present() -> bool:
        return await store.get_code(P, U, "login") is not None

    await store.put_code(P, U, "login", StoredCode(b"d", NOW), 300)
    await backend.assert_expires(keys.user_key(P, U, "code:login"), 300, present)


async def test_concurrent_consumers_of_one_code_exactly_one_wins(store: StateStore) -> None:
    await store.put_code(P, U, "login", StoredCode(b"right", NOW), 300)

    results = await asyncio.gather(
        *(store.consume_code(P, U, "login", b"right") for _ in range(20))
    )

    assert results.count(True) == 1
    assert await store.get_code(P, U, "login") is None


# --- recovery codes -----------------------------------------------------------


async def test_recovery_codes_are_each_usable_once(store: StateStore) -> None:
    assert await store.count_recovery_codes(P, U) == 0
    await store.set_recovery_codes(P, U, [b"r1", b"r2", b"\x00r3"])
    assert await store.count_recovery_codes(P, U) == 3

    assert await store.consume_recovery_code(P, U, b"\x00r3") is True
    assert await store.consume_recovery_code(P, U, b"\x00r3") is False
    assert await store.consume_recovery_code(P, U, b"unknown") is False
    assert await store.consume_recovery_code(P, "bob", b"r1") is False
    assert await store.count_recovery_codes(P, U) == 2


async def test_setting_recovery_codes_replaces_the_old_ones(store: StateStore) -> None:
    await store.set_recovery_codes(P, U, [b"old-1", b"old-2"])
    await store.set_recovery_codes(P, U, [b"new-1"])

    assert await store.count_recovery_codes(P, U) == 1
    assert await store.consume_recovery_code(P, U, b"old-1") is False
    assert await store.consume_recovery_code(P, U, b"new-1") is True

    await store.set_recovery_codes(P, U, [b"again"])
    await store.set_recovery_codes(P, U, [])
    assert await store.count_recovery_codes(P, U) == 0


async def test_concurrent_uses_of_one_recovery_code_exactly_one_wins(store: StateStore) -> None:
    await store.set_recovery_codes(P, U, [b"r1"])

    results = await asyncio.gather(*(store.consume_recovery_code(P, U, b"r1") for _ in range(20)))

    assert results.count(True) == 1


# --- counters and markers -----------------------------------------------------


async def test_hit_counts_within_a_window_that_starts_at_the_first_hit(
    backend: Backend,
) -> None:
    store = backend.make()
    first = await store.hit(TAG, "fail", 900)
    assert first.count == 1
    assert 899 < first.resets_in <= 900

    # 100 s pass: move the clock, or (Redis) shorten the key's TTL as time would.
    backend.clock.advance(100)
    if backend.raw is not None:
        await backend.raw.pexpire(keys.key(TAG, "count:fail"), 800_000)
    second = await store.hit(TAG, "fail", 900)
    assert second.count == 2
    # A later hit does not extend the window.
    assert 799 < second.resets_in <= 800


async def test_peek_reports_without_counting(store: StateStore) -> None:
    assert (await store.peek(TAG, "fail")).count == 0
    assert (await store.peek(TAG, "fail")).resets_in == 0.0

    await store.hit(TAG, "fail", 900)
    await store.hit(TAG, "fail", 900)
    seen = await store.peek(TAG, "fail")
    again = await store.peek(TAG, "fail")

    assert seen.count == again.count == 2
    assert 899 < seen.resets_in <= 900
    assert (await store.peek(TAG, "other")).count == 0


async def test_reset_clears_a_counter(store: StateStore) -> None:
    await store.hit(TAG, "fail", 900)
    await store.hit(keys.ip_tag(P, "10.0.0.1"), "fail", 900)

    await store.reset(TAG, "fail")

    assert (await store.peek(TAG, "fail")).count == 0
    assert (await store.hit(TAG, "fail", 900)).count == 1
    assert (await store.peek(keys.ip_tag(P, "10.0.0.1"), "fail")).count == 1


async def test_a_counter_resets_after_its_window(backend: Backend) -> None:
    store = backend.make()

    async def counting() -> bool:
        return (await store.peek(TAG, "fail")).count > 0

    await store.hit(TAG, "fail", 900)
    await backend.assert_expires(keys.key(TAG, "count:fail"), 900, counting)
    if backend.raw is None:
        assert (await store.hit(TAG, "fail", 900)).count == 1


async def test_concurrent_hits_are_all_counted(store: StateStore) -> None:
    results = await asyncio.gather(*(store.hit(TAG, "fail", 900) for _ in range(20)))

    assert sorted(r.count for r in results) == list(range(1, 21))


async def test_claim_is_won_once_until_it_expires(backend: Backend) -> None:
    store = backend.make()
    assert await store.claim(TAG, "resend", 60) == 0.0

    left = await store.claim(TAG, "resend", 60)
    assert 59 < left <= 60
    assert await store.claim(TAG, "other", 60) == 0.0

    async def claimed() -> bool:
        return await store.claim(TAG, "resend", 60) != 0.0

    await backend.assert_expires(keys.key(TAG, "claim:resend"), 60, claimed)
    if backend.raw is None:
        # The last probe found the marker expired, so it claimed it again.
        assert await store.claim(TAG, "resend", 60) > 0.0


async def test_concurrent_claims_exactly_one_wins(store: StateStore) -> None:
    results = await asyncio.gather(*(store.claim(TAG, "resend", 60) for _ in range(20)))

    assert results.count(0.0) == 1


async def test_counters_and_markers_do_not_share_names(store: StateStore) -> None:
    await store.hit(TAG, "send", 60)
    assert await store.claim(TAG, "send", 60) == 0.0
    assert (await store.hit(TAG, "send", 60)).count == 2


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: s.hit(TAG, "n", 0), id="hit-window"),
        pytest.param(lambda s: s.claim(TAG, "n", -1), id="claim-ttl"),
        pytest.param(lambda s: s.put_code(P, U, "p", StoredCode(b"d", NOW), 0), id="code-ttl"),
        pytest.param(lambda s: s.record_verification(P, U, "d", "i", NOW, 0), id="trust-retention"),
    ],
)
async def test_durations_must_be_positive(
    store: StateStore, call: Callable[[StateStore], Awaitable[object]]
) -> None:
    with pytest.raises(ValueError, match="positive"):
        await call(store)


async def test_list_bounds_must_be_positive(backend: Backend) -> None:
    with pytest.raises(ConfigurationError):
        backend.make(max_ips_per_user=0)
    with pytest.raises(ConfigurationError):
        MemoryStore(max_devices_per_user=0)


# --- delete_user and lifecycle ------------------------------------------------


async def fill(store: StateStore, user: str) -> None:
    tag = keys.user_tag(P, user)
    await store.record_verification(P, user, "dev", "ip", NOW, DAY)
    await store.set_totp(P, user, TotpRecord(b"seed", confirmed=True))
    await store.use_totp_step(P, user, 1000)
    await store.put_code(P, user, "login", StoredCode(b"c1", NOW), 300)
    await store.put_code(P, user, "some-new-purpose", StoredCode(b"c2", NOW), 300)
    await store.set_recovery_codes(P, user, [b"r1", b"r2"])
    await store.hit(tag, "fail", 900)
    await store.hit(tag, "a-counter-named-later", 60)
    await store.claim(tag, "resend", 60)


async def test_delete_user_removes_everything_of_that_user_only(backend: Backend) -> None:
    store = backend.make()
    ip_tag = keys.ip_tag(P, "10.0.0.1")
    await fill(store, U)
    await fill(store, "bob")
    await store.hit(ip_tag, "fail", 900)

    await store.delete_user(P, U)

    assert await store.read_state(P, U, "dev", "ip") == VerificationState()
    assert await store.get_totp(P, U) is None
    assert await store.use_totp_step(P, U, 1000) is True
    assert await store.get_code(P, U, "login") is None
    assert await store.get_code(P, U, "some-new-purpose") is None
    assert await store.count_recovery_codes(P, U) == 0
    assert (await store.peek(TAG, "fail")).count == 0
    assert (await store.peek(TAG, "a-counter-named-later")).count == 0
    assert await store.claim(TAG, "resend", 60) == 0.0
    # Bob and the IP's counters are untouched.
    assert (await store.read_state(P, "bob", "dev", "ip")).device_verified_at == NOW
    assert await store.get_code(P, "bob", "some-new-purpose") == StoredCode(b"c2", NOW)
    assert await store.count_recovery_codes(P, "bob") == 2
    assert (await store.peek(keys.user_tag(P, "bob"), "a-counter-named-later")).count == 1
    assert (await store.peek(ip_tag, "fail")).count == 1


async def test_ping_and_close(backend: Backend) -> None:
    store = backend.make()
    await store.ping()
    await store.close()
