"""PortalAdmin against a real Redis, and a real TwoFactor core that obeys it."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.support.core_harness import Browser, Outbox, make_core
from twofa_middleware import audit, keys
from twofa_middleware.admin import PortalAdmin
from twofa_middleware.decision import Identity
from twofa_middleware.errors import ConfigurationError, PolicyError, StoreError
from twofa_middleware.flow import Respond, TwoFactor
from twofa_middleware.policy import Group, Method, PortalPolicy
from twofa_middleware.store import RedisStore


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[PortalAdmin]:
    async with PortalAdmin.from_url(redis_url) as a:
        yield a


@pytest.fixture
async def core(redis_url: str) -> AsyncIterator[tuple[TwoFactor, Outbox]]:
    outbox = Outbox()
    c = make_core(redis_url, outbox)
    await c.start()
    yield c, outbox
    await c.close()
    outbox.close()


@pytest.fixture
def browser(core: tuple[TwoFactor, Outbox]) -> Browser:
    return Browser(*core)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


# --- portals -----------------------------------------------------------------------


async def test_set_enable_disable_show_list(admin: PortalAdmin) -> None:
    assert await admin.list_portals() == []
    shown = await admin.show_portal("acme")
    assert (shown.source, shown.policy.enforce) == ("none", False)

    change = await admin.set_portal(
        "acme",
        actor="alice",
        methods=["email", "totp"],
        groups=["administrator", "worker"],
        ip_change_only=True,
        reauth_hours=12,
        ip_verification_hours=None,
    )
    assert change.before is None
    assert change.after == PortalPolicy(
        methods=frozenset({Method.EMAIL, Method.TOTP}),
        groups=frozenset({Group.ADMINISTRATOR, Group.WORKER}),
        ip_change_only=True,
        reauth_hours=12,
        ip_verification_hours=None,
    )
    enabled = await admin.enable_portal("acme", actor="alice")
    assert enabled.changed == ["enforce"]
    assert enabled.after == change.after.replace(enforce=True)

    # Empty lists mean "all", as on the page; the other settings are kept.
    widened = await admin.set_portal("acme", methods=[], groups=[])
    assert widened.changed == ["groups", "methods"]
    assert widened.after.allowed_methods == frozenset(Method)
    assert widened.after.reauth_hours == 12

    shown = await admin.show_portal("acme")
    assert shown.source == "own" and shown.policy == widened.after
    assert [p.portal for p in await admin.list_portals()] == ["acme"]

    disabled = await admin.disable_portal("acme")
    assert not disabled.after.enforce
    assert disabled.after.replace(enforce=True) == widened.after


async def test_a_portal_without_a_policy_starts_from_default(admin: PortalAdmin) -> None:
    await admin.replace_portal("default", {"enforce": True, "reauth_hours": 2})
    shown = await admin.show_portal("globex")
    assert (shown.source, shown.policy.reauth_hours) == ("default", 2)
    change = await admin.set_portal("globex", methods=["totp"])
    assert change.before is None
    assert change.after == PortalPolicy(
        enforce=True, methods=frozenset({Method.TOTP}), reauth_hours=2
    )
    assert await admin.delete_portal("globex")
    assert (await admin.show_portal("globex")).source == "default"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"methods": ["email", "carrier-pigeon"]}, "methods"),
        ({"groups": ["root"]}, "groups"),
        ({"reauth_hours": 0}, "reauth_hours"),
        ({"ip_verification_hours": -3}, "ip_verification_hours"),
        ({"ip_change_only": "yes"}, "ip_change_only"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_invalid_changes_name_the_field_and_write_nothing(
    admin: PortalAdmin, changes: dict[str, object], field: str
) -> None:
    with pytest.raises(PolicyError) as raised:
        await admin.set_portal("acme", **changes)
    assert raised.value.field == field
    assert field in str(raised.value)
    assert await admin.list_portals() == []


async def test_nothing_to_change_is_an_error(admin: PortalAdmin) -> None:
    with pytest.raises(ConfigurationError, match="nothing to change"):
        await admin.set_portal("acme")
    with pytest.raises(ConfigurationError, match="portal id"):
        await admin.show_portal("")


async def test_policy_changes_are_audited_with_before_and_after(
    admin: PortalAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="twofa_middleware.audit"):
        await admin.set_portal("acme", actor="alice", reason="ticket 42", enforce=True)
        await admin.set_portal("acme", actor="bob", reauth_hours=None)
    first, second = (r.twofa for r in caplog.records if hasattr(r, "twofa"))
    assert first["event"] == second["event"] == "policy_set"
    assert (first["actor"], first["reason"], first["changed"]) == (
        "alice",
        "ticket 42",
        ["enforce", "groups", "ip_change_only", "ip_verification_hours", "methods", "reauth_hours"],
    )
    assert "before" not in first  # the portal had no policy of its own
    assert first["after"]["enforce"] is True
    assert second["before"]["reauth_hours"] == 24.0
    assert second["after"]["reauth_hours"] is None
    assert second["changed"] == ["reauth_hours"]
    assert isinstance(second["at"], float)


async def test_concurrent_updates_do_not_lose_each_other(admin: PortalAdmin) -> None:
    import asyncio

    await asyncio.gather(
        admin.set_portal("acme", methods=["totp"]),
        admin.set_portal("acme", reauth_hours=3),
        admin.set_portal("acme", ip_change_only=True),
        admin.enable_portal("acme"),
    )
    policy = (await admin.show_portal("acme")).policy
    assert policy == PortalPolicy(
        enforce=True, methods=frozenset({Method.TOTP}), reauth_hours=3, ip_change_only=True
    )


async def test_policy_change_reaches_a_running_core(admin: PortalAdmin, browser: Browser) -> None:
    assert await browser.reason() == "not_enforced"
    await admin.enable_portal("acme")
    assert await browser.reason() == "new_device"
    await admin.set_portal("acme", groups=["administrator"])
    assert await browser.reason() == "group_exempt"


# --- revocation --------------------------------------------------------------------


async def test_revoke_portal_makes_a_verified_user_verify_again(
    admin: PortalAdmin, browser: Browser
) -> None:
    await admin.enable_portal("acme")
    await browser.pass_email()
    assert await browser.reason() == "device_trusted"

    revoked_at = await admin.revoke_portal("acme", actor="alice", reason="laptop stolen")
    assert revoked_at == pytest.approx(time.time(), abs=5)
    # The same browser, cookie and all: challenged again, as a device never seen.
    assert await browser.reason() == "new_device"
    result = await browser.get()
    assert isinstance(result, Respond) and result.response.status == 401

    # Enrollment and factors are kept; verifying again restores trust.
    await browser.pass_email()
    assert await browser.reason() == "device_trusted"
    status = await admin.user_status("acme", "alice")
    assert status.revoked_before == revoked_at
    assert [d.trusted for d in status.devices] == [True]


async def test_revoke_portal_in_ip_change_only_mode(
    admin: PortalAdmin, browser: Browser, core: tuple[TwoFactor, Outbox]
) -> None:
    await admin.set_portal("acme", enforce=True, ip_change_only=True)
    await browser.pass_email()
    assert await browser.reason() == "ip_trusted"
    await admin.revoke_portal("acme")
    assert await browser.reason() == "new_ip"


async def test_revocation_is_per_portal(admin: PortalAdmin, redis_url: str) -> None:
    store = RedisStore.from_url(redis_url)
    try:
        await admin.replace_portal("default", {"enforce": True})
        now = time.time()
        for portal in ("acme", "globex"):
            await store.record_verification(portal, "alice", "dev", "1.2.3.4", now - 10, 86400)
        await admin.revoke_portal("acme")
        acme = await admin.user_status("acme", "alice")
        globex = await admin.user_status("globex", "alice")
        assert [d.trusted for d in acme.devices] == [False]
        assert [d.trusted for d in globex.devices] == [True]
        assert (await admin.show_portal("acme")).revoked_before is not None
        assert (await admin.show_portal("globex")).revoked_before is None
    finally:
        await store.close()


# --- users -------------------------------------------------------------------------


async def test_user_status_reset_and_unlock(
    admin: PortalAdmin, browser: Browser, redis_url: str
) -> None:
    await admin.enable_portal("acme")
    empty = await admin.user_status("acme", "alice")
    assert empty.to_dict() == {
        "portal": "acme",
        "user": "alice",
        "enrolled": {"totp": False, "recovery_codes_left": 0},
        "last_verified_at": None,
        "revoked_before": None,
        "devices": [],
        "ips": [],
        "lockout": {"failures": 0, "max_failures": 5, "locked": False, "resets_in": 0.0},
    }

    await browser.pass_email()
    status = await admin.user_status("acme", "alice")
    assert status.last_verified_at == pytest.approx(time.time(), abs=5)
    [device] = status.devices
    assert len(device.id) == 12 and device.trusted
    assert device.expires_at == pytest.approx(device.verified_at + 24 * 3600)
    [ip] = status.ips
    assert ip.id == "198.51.100.7" and ip.trusted
    assert ip.expires_at == pytest.approx(ip.verified_at + 720 * 3600)

    # Five wrong codes lock alice out.
    await browser.post("/_2fa/challenge/email/send", {})
    for _ in range(5):
        wrong = await browser.post("/_2fa/challenge/email/verify", {"code": "000000"})
        assert wrong.status in (400, 200)  # (a lucky 000000 is vanishingly unlikely)
    locked = await admin.user_status("acme", "alice")
    assert locked.lockout.locked and locked.lockout.failures == 5
    assert 0 < locked.lockout.resets_in <= 900
    refused = await browser.post("/_2fa/challenge/email/verify", {"code": "000000"})
    assert refused.status == 429

    assert await admin.unlock_user("acme", "alice", actor="helpdesk") is True
    assert not (await admin.user_status("acme", "alice")).lockout.locked
    assert await admin.unlock_user("acme", "alice") is False

    await admin.reset_user("acme", "alice", actor="helpdesk", reason="new phone")
    assert (await admin.user_status("acme", "alice")).to_dict() == empty.to_dict()
    assert await browser.reason() == "new_device"


async def test_revoking_a_user_keeps_factors_and_asks_every_device_again(
    admin: PortalAdmin, core: tuple[TwoFactor, Outbox], caplog: pytest.LogCaptureFixture
) -> None:
    """The host app's "password changed" / "sign out everywhere" hook."""
    import pyotp

    await admin.enable_portal("acme")
    browser = Browser(*core, identity=Identity("bob", Group.WORKER))
    start = await browser.post("/_2fa/enroll/totp", {})
    secret = json.loads(start.body)["secret"]
    done = await browser.post("/_2fa/enroll/totp", {"code": pyotp.TOTP(secret).now()})
    assert done.status == 200, done.body
    assert await browser.reason() == "device_trusted"

    with caplog.at_level("INFO", logger="twofa_middleware.audit"):
        await admin.revoke_user("acme", "bob", actor="app", reason="password changed")
    assert await browser.reason() == "new_device"
    status = await admin.user_status("acme", "bob")
    assert (status.totp_enrolled, status.recovery_codes_left) == (True, 10)
    assert status.devices == [] and status.ips == []
    events = [r.twofa for r in caplog.records if hasattr(r, "twofa")]
    assert [(e["event"], e["actor"], e["reason"]) for e in events] == [
        ("user_trust_revoked", "app", "password changed")
    ]


async def test_user_status_shows_totp_and_recovery_codes(
    admin: PortalAdmin, core: tuple[TwoFactor, Outbox]
) -> None:
    import pyotp

    await admin.enable_portal("acme")
    # Bob has no email or phone: nothing to verify with, so he may enroll an
    # authenticator right after password login.
    browser = Browser(*core, identity=Identity("bob", Group.WORKER))
    start = await browser.post("/_2fa/enroll/totp", {})
    assert start.status == 200, start.body
    secret = json.loads(start.body)["secret"]
    done = await browser.post("/_2fa/enroll/totp", {"code": pyotp.TOTP(secret).now()})
    assert done.status == 200, done.body
    status = await admin.user_status("acme", "bob")
    assert status.totp_enrolled and status.recovery_codes_left == 10
    assert status.devices and status.devices[0].trusted  # enrolling counts as verifying


async def test_bad_user_id(admin: PortalAdmin) -> None:
    with pytest.raises(ConfigurationError, match="user id"):
        await admin.user_status("acme", "")


# --- audit stream ------------------------------------------------------------------


async def test_audit_stream_keeps_events_without_codes_or_contacts(
    admin: PortalAdmin, browser: Browser, redis_url: str
) -> None:
    stream = audit.RedisAuditStream.shared(redis_url)
    assert admin.audit_stream is stream  # PortalAdmin.from_url installed it already
    await admin.enable_portal("acme", actor="alice")
    result = await browser.get()
    assert isinstance(result, Respond)
    await browser.post("/_2fa/challenge/email/send", {})
    await browser.post("/_2fa/challenge/email/verify", {"code": "000000"})
    await browser.pass_email()
    codes = browser.outbox.codes()
    await admin.reset_user("acme", "alice", actor="helpdesk")
    assert stream.flush(5.0)

    events = await admin.audit_tail("acme", 50)
    names = [e["event"] for e in events]
    for expected in (
        "policy_set",
        "challenge",
        "code_sent",
        "verification_failed",
        "verified",
        "user_reset",
    ):
        assert expected in names, names
    assert names.index("policy_set") < names.index("challenge") < names.index("user_reset")
    challenge = events[names.index("challenge")]
    assert challenge["reason"] == "new_device" and challenge["user"] == "alice"
    text = json.dumps(events)
    for code in codes:
        assert code not in text
    assert "@" not in text
    assert [e["event"] for e in await admin.audit_tail("acme", 2)] == names[-2:]
    assert await admin.audit_tail("globex") == []


async def test_audit_stream_is_capped(redis_url: str, raw: aioredis.Redis) -> None:
    stream = audit.RedisAuditStream.from_url(redis_url, maxlen=100)
    try:
        for i in range(1000):
            stream.submit({"event": "challenge", "portal": "capped", "user": str(i), "at": 1.0})
        assert stream.flush(10.0)
        length = await raw.xlen(keys.audit_stream("capped"))
        assert 100 <= length < 1000  # MAXLEN ~: trimmed by whole nodes
        assert stream.written == 1000
    finally:
        stream.close()


async def test_audit_stream_failure_never_reaches_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.support.redis_server import free_port

    stream = audit.RedisAuditStream.from_url(f"redis://127.0.0.1:{free_port()}/0")
    audit.add_sink(stream)
    try:
        started = time.perf_counter()
        audit.emit("challenge", portal="acme", user="alice", reason="new_device")
        assert time.perf_counter() - started < 0.05  # queued, not written inline
        assert stream.flush(10.0)
        assert stream.dropped == 1 and stream.written == 0
        assert any("audit stream" in r.getMessage() for r in caplog.records)
    finally:
        stream.close()
    assert stream not in audit.sinks()
    stream.submit({"event": "late", "portal": "acme"})
    assert stream.dropped == 2


async def test_audit_tail_when_redis_is_down() -> None:
    from tests.support.redis_server import free_port

    admin = PortalAdmin.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StoreError, match="audit events"):
            await admin.audit_tail("acme")
        with pytest.raises(StoreError):
            await admin.list_portals()
    finally:
        await admin.close()
        assert admin.audit_stream is not None
        admin.audit_stream.close()  # not left installed for the later tests
