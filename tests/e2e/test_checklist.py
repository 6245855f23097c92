"""SECURITY.md item 71 end to end: only the demo apps see a password, so only they can
show that the middleware never keeps it (nor the app's session cookie) anywhere."""

from __future__ import annotations

import base64

import pyotp
from itsdangerous import URLSafeTimedSerializer
from redis.asyncio import Redis

from tests.e2e.conftest import Browser, Portal, load_demo
from tests.test_checklist import redis_contents
from twofa_middleware import audit


def password_forms(password: str) -> list[bytes]:
    """The password as given and base64-encoded (django-two-factor-auth <= 1.11 kept it
    base64-encoded in the session, CVE-2020-15105), with and without padding."""
    raw = password.encode()
    encoded = [base64.b64encode(raw), base64.urlsafe_b64encode(raw)]
    return [raw, *encoded, *(e.rstrip(b"=") for e in encoded)]


async def scan(portal: Portal) -> list[bytes]:
    """Every key and value in the portal's Redis, once queued audit events are written."""
    audit.flush(timeout=5.0)
    raw = Redis.from_url(portal.env["TWOFA_REDIS_URL"])
    try:
        return await redis_contents(raw)
    finally:
        await raw.aclose()


async def test_the_password_and_the_app_session_are_never_kept_by_the_middleware(
    portal: Portal, browser: Browser
) -> None:
    """Item 71: after a password login, an email code, a TOTP enrollment and a TOTP
    sign-in, nothing written to Redis and none of the middleware's own cookies holds
    the password (plain or base64) or the app's session cookie.

    The demo password is the common word "demo", which the demo's start-up also writes
    (its policy audit events name the actor "demo"): so the scan looks at what the
    flow added to Redis, against a snapshot taken after start-up, before the login.
    """
    demo = load_demo("demo_users")
    # Any request to the middleware starts its core (the WSGI adapters start it lazily),
    # which is when the demo seeds its policies.
    warm_up = await browser.get_json("/_2fa/challenge")
    assert warm_up.status_code == 401, warm_up.text
    before = set(await scan(portal))

    await browser.login("worker", demo.PASSWORD)
    await browser.pass_email("worker")
    started = await browser.post_json("/_2fa/enroll/totp", {})
    assert started.status_code == 200, started.text
    seed = started.json()["secret"]
    confirmed = await browser.post_json(
        "/_2fa/enroll/totp", {"code": pyotp.TOTP(seed).at(portal.clock())}
    )
    assert confirmed.status_code == 200, confirmed.text
    session = browser.client.cookies.get(demo.SESSION_COOKIE)
    assert session  # the app's own first-factor session
    ours = [c.value for c in browser.client.cookies.jar if c.name.startswith("twofa_") and c.value]
    assert ours  # the device cookie
    # The cookies' signed payloads, decoded (reading them needs no key).
    payloads = [
        str(URLSafeTimedSerializer("any").loads_unsafe(value, salt="twofa.device")[1]).encode()
        for value in ours
    ]

    written = [item for item in await scan(portal) if item not in before]

    assert any(b"totp" in item for item in written)  # the scan sees the flow's records
    for where in (*written, *payloads, *(v.encode() for v in ours)):
        for form in password_forms(demo.PASSWORD):
            assert form not in where, (form, where)
        assert session.encode() not in where
