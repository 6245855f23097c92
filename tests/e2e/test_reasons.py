"""Every decision reason, reached over HTTP against the running demo.

What the app sees is read from ``GET /api/me``: ``200`` with ``twofa_reason`` (the
decision the middleware put in ``scope["twofa"]``) when the request passed, or the
middleware's ``401`` JSON with ``reason`` when a second factor is due.

The demo's policies: acme enforces 2FA for everyone (device mode, reauth 24 h);
globex only for administrators and only on a new IP (reauth 24 h, IP 720 h).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx

from tests.e2e.conftest import Browser, Portal, PortalFactory

HOUR = 3600.0
DAY = 24 * HOUR
ADMIN_PHONE = "+15550100"
GLOBEX_ADMINS_ON_IP_CHANGE: dict[str, Any] = {
    "enforce": True,
    "groups": ["administrator"],
    "ip_change_only": True,
}


def assert_passed(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 200, response.text
    assert response.json()["twofa_reason"] == reason


def assert_challenged(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["error"] == "two_factor_required"
    assert body["reason"] == reason
    assert body["challenge_url"].startswith("/_2fa/challenge?next=")


async def signed_in(portal: Portal, user: str, host: str = "acme.localhost", **kw: str) -> Browser:
    browser = portal.browser(host=host, **kw)
    await browser.login(user)
    return browser


# --- not_enforced / group_exempt -----------------------------------------------


async def test_a_portal_whose_policy_does_not_enforce_lets_users_pass_as_not_enforced(
    start_portal: PortalFactory,
) -> None:
    portal = start_portal({"acme": {"enforce": False}})
    async with await signed_in(portal, "admin") as b:
        assert_passed(await b.get_json("/api/me"), "not_enforced")
        page = await b.get("/")
        assert page.status_code == 200
        assert "<code>not_enforced</code>" in page.text


async def test_a_portal_without_any_policy_lets_users_pass_as_not_enforced(
    start_portal: PortalFactory,
) -> None:
    portal = start_portal({"acme": {"enforce": True}})
    async with await signed_in(portal, "admin", host="globex.localhost") as b:
        assert_passed(await b.get_json("/api/me"), "not_enforced")
    async with await signed_in(portal, "admin") as b:
        assert_challenged(await b.get_json("/api/me"), "new_device")


async def test_users_outside_the_enforced_groups_pass_as_group_exempt(portal: Portal) -> None:
    for user in ("worker", "client"):
        async with await signed_in(portal, user, host="globex.localhost") as b:
            assert_passed(await b.get_json("/api/me"), "group_exempt")
            assert (await b.get("/")).status_code == 200


async def test_an_anonymous_request_is_never_challenged(browser: Browser) -> None:
    response = await browser.get_json("/api/me")
    assert response.status_code == 401
    assert response.json() == {"error": "not_authenticated"}
    assert (await browser.get("/")).headers["location"] == "/login"


# --- device mode: new_device / device_trusted / reauth_due ------------------------


async def test_a_browser_never_verified_is_challenged_as_new_device(browser: Browser) -> None:
    await browser.login("admin")
    assert_challenged(await browser.get_json("/api/me"), "new_device")


async def test_a_verified_browser_passes_as_device_trusted(browser: Browser) -> None:
    await browser.login("admin")
    await browser.pass_email("admin")
    assert_passed(await browser.get_json("/api/me"), "device_trusted")
    page = await browser.get("/")
    assert page.status_code == 200
    assert "<code>device_trusted</code>" in page.text


async def test_another_browser_of_a_verified_user_is_still_a_new_device(
    portal: Portal, browser: Browser
) -> None:
    await browser.login("admin")
    await browser.pass_email("admin")
    # Same user, same IP, no device cookie: device mode does not trust the IP.
    async with await signed_in(portal, "admin", ip=browser.ip) as other:
        assert_challenged(await other.get_json("/api/me"), "new_device")
    assert_passed(await browser.get_json("/api/me"), "device_trusted")


async def test_a_verified_browser_stays_trusted_from_another_ip_in_device_mode(
    browser: Browser,
) -> None:
    await browser.login("admin")
    await browser.pass_email("admin")
    browser.ip = "203.0.113.77"
    assert_passed(await browser.get_json("/api/me"), "device_trusted")


async def test_a_verification_is_due_again_exactly_24_hours_later(
    portal: Portal, browser: Browser
) -> None:
    portal.clock.freeze()  # exact boundaries: no time passes between requests
    await browser.login("admin")
    await browser.pass_email("admin")
    portal.clock.advance(DAY - 1)
    assert_passed(await browser.get_json("/api/me"), "device_trusted")
    portal.clock.advance(1)
    assert_challenged(await browser.get_json("/api/me"), "reauth_due")
    page = await browser.get("/")
    assert page.status_code == 303
    assert page.headers["location"] == "/_2fa/challenge?next=%2F"


async def test_verifying_again_after_reauth_due_makes_the_browser_trusted_again(
    portal: Portal, browser: Browser
) -> None:
    await browser.login("admin")
    await browser.pass_email("admin")
    portal.clock.advance(DAY)
    assert_challenged(await browser.get_json("/api/me"), "reauth_due")
    # By SMS: the email resend cooldown runs on real time.
    await browser.pass_sms(ADMIN_PHONE)
    assert_passed(await browser.get_json("/api/me"), "device_trusted")


async def test_the_reauth_duration_comes_from_the_portal_policy(
    start_portal: PortalFactory,
) -> None:
    portal = start_portal({"acme": {"enforce": True, "reauth_hours": 1}})
    portal.clock.freeze()  # exact boundaries: no time passes between requests
    async with await signed_in(portal, "admin") as b:
        await b.pass_email("admin")
        portal.clock.advance(HOUR - 1)
        assert_passed(await b.get_json("/api/me"), "device_trusted")
        portal.clock.advance(1)
        assert_challenged(await b.get_json("/api/me"), "reauth_due")


async def test_a_null_reauth_duration_never_asks_again(start_portal: PortalFactory) -> None:
    portal = start_portal({"acme": {"enforce": True, "reauth_hours": None}})
    async with await signed_in(portal, "admin") as b:
        await b.pass_email("admin")
        portal.clock.advance(365 * DAY)
        assert_passed(await b.get_json("/api/me"), "device_trusted")


# --- IP mode: new_ip / ip_trusted / ip_expired / reauth_due ------------------------


async def test_ip_mode_challenges_a_first_visit_as_new_ip(portal: Portal) -> None:
    async with await signed_in(portal, "admin", host="globex.localhost") as b:
        assert_challenged(await b.get_json("/api/me"), "new_ip")


async def test_ip_mode_lets_a_verified_ip_pass_as_ip_trusted(portal: Portal) -> None:
    async with await signed_in(portal, "admin", host="globex.localhost") as b:
        await b.pass_email("admin", portal="globex")
        assert_passed(await b.get_json("/api/me"), "ip_trusted")


async def test_ip_mode_challenges_the_same_browser_from_another_ip_as_new_ip(
    portal: Portal,
) -> None:
    async with await signed_in(portal, "admin", host="globex.localhost") as b:
        await b.pass_email("admin", portal="globex")
        first_ip = b.ip
        b.ip = "203.0.113.5"
        assert_challenged(await b.get_json("/api/me"), "new_ip")
        await b.pass_sms(ADMIN_PHONE)
        assert_passed(await b.get_json("/api/me"), "ip_trusted")
        # The first IP is still trusted too.
        b.ip = first_ip
        assert_passed(await b.get_json("/api/me"), "ip_trusted")


async def test_ip_mode_lets_a_new_browser_from_a_trusted_ip_pass(portal: Portal) -> None:
    async with await signed_in(portal, "admin", host="globex.localhost") as b:
        await b.pass_email("admin", portal="globex")
        async with await signed_in(portal, "admin", host="globex.localhost", ip=b.ip) as fresh:
            assert_passed(await fresh.get_json("/api/me"), "ip_trusted")


async def test_ip_mode_asks_again_exactly_720_hours_after_the_ip_was_verified(
    start_portal: PortalFactory,
) -> None:
    # reauth_hours null isolates the IP duration from the re-authentication one.
    policy = GLOBEX_ADMINS_ON_IP_CHANGE | {"reauth_hours": None}
    portal = start_portal({"globex": policy})
    portal.clock.freeze()  # exact boundaries: no time passes between requests
    async with await signed_in(portal, "admin", host="globex.localhost") as b:
        await b.pass_email("admin", portal="globex")
        portal.clock.advance(720 * HOUR - 1)
        assert_passed(await b.get_json("/api/me"), "ip_trusted")
        portal.clock.advance(1)
        assert_challenged(await b.get_json("/api/me"), "ip_expired")


async def test_ip_mode_reports_ip_expired_before_reauth_due(portal: Portal) -> None:
    portal.clock.freeze()  # exact boundaries: no time passes between requests
    async with await signed_in(portal, "admin", host="globex.localhost") as b:
        await b.pass_email("admin", portal="globex")
        portal.clock.advance(720 * HOUR - 1)
        assert_challenged(await b.get_json("/api/me"), "reauth_due")
        portal.clock.advance(1)
        assert_challenged(await b.get_json("/api/me"), "ip_expired")


async def test_ip_mode_asks_again_exactly_24_hours_after_the_last_verification(
    portal: Portal,
) -> None:
    portal.clock.freeze()  # exact boundaries: no time passes between requests
    async with await signed_in(portal, "admin", host="globex.localhost") as b:
        await b.pass_email("admin", portal="globex")
        portal.clock.advance(DAY - 1)
        assert_passed(await b.get_json("/api/me"), "ip_trusted")
        portal.clock.advance(1)
        assert_challenged(await b.get_json("/api/me"), "reauth_due")
        # Even a new browser from the trusted IP is now due.
        async with await signed_in(portal, "admin", host="globex.localhost", ip=b.ip) as fresh:
            assert_challenged(await fresh.get_json("/api/me"), "reauth_due")
        await b.pass_sms(ADMIN_PHONE)
        assert_passed(await b.get_json("/api/me"), "ip_trusted")


async def test_ip_mode_trusts_every_address_of_a_verified_ipv6_64(portal: Portal) -> None:
    async with await signed_in(
        portal, "admin", host="globex.localhost", ip="2001:db8:1:2::10"
    ) as b:
        await b.pass_email("admin", portal="globex")
        b.ip = "2001:db8:1:2:ffff::1"
        assert_passed(await b.get_json("/api/me"), "ip_trusted")
        b.ip = "2001:db8:1:3::10"
        assert_challenged(await b.get_json("/api/me"), "new_ip")


async def test_ip_mode_treats_an_ipv4_mapped_address_as_its_ipv4_address(
    portal: Portal,
) -> None:
    async with await signed_in(portal, "admin", host="globex.localhost", ip="192.0.2.44") as b:
        await b.pass_email("admin", portal="globex")
        b.ip = "::ffff:192.0.2.44"
        assert_passed(await b.get_json("/api/me"), "ip_trusted")


# --- how a due challenge is answered ---------------------------------------------


def next_of(location: str) -> str:
    parts = urlsplit(location)
    assert parts.path == "/_2fa/challenge"
    values = parse_qs(parts.query)["next"]
    assert len(values) == 1
    return values[0]


async def test_html_navigation_is_redirected_303_to_the_challenge_keeping_path_and_query(
    browser: Browser,
) -> None:
    await browser.login("admin")
    target = "/api/me?tab=keys&q=a%20b&x=%2F"
    response = await browser.get(target)
    assert response.status_code == 303
    assert response.headers["location"] == "/_2fa/challenge?next=" + quote(target, safe="")
    assert next_of(response.headers["location"]) == target
    assert response.headers["cache-control"] == "no-store"
    # The challenge page carries that target on to its forms.
    page = await browser.get(response.headers["location"])
    assert page.status_code == 200
    assert 'name="next" value="/api/me?tab=keys&amp;q=a%20b&amp;x=%2F"' in page.text


async def test_a_json_request_is_answered_401_with_reason_and_challenge_url(
    browser: Browser,
) -> None:
    await browser.login("admin")
    response = await browser.get_json("/api/me?page=2")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {
        "error": "two_factor_required",
        "reason": "new_device",
        "challenge_url": "/_2fa/challenge?next=%2Fapi%2Fme%3Fpage%3D2",
    }
    # The challenge URL leads to the challenge, which names the same reason and target.
    challenge = await browser.get_json(response.json()["challenge_url"])
    assert challenge.status_code == 200
    assert challenge.json()["reason"] == "new_device"
    assert challenge.json()["next"] == "/api/me?page=2"


async def test_a_post_is_answered_401_json_even_from_an_html_form(browser: Browser) -> None:
    await browser.login("admin")
    response = await browser.post_form("/api/me", {"field": "value"})
    assert response.status_code == 401
    assert response.json()["error"] == "two_factor_required"
    assert response.json()["reason"] == "new_device"
    json_post = await browser.post_json("/api/me", {"field": "value"})
    assert_challenged(json_post, "new_device")


async def test_a_head_navigation_is_redirected_and_a_head_api_call_gets_401(
    browser: Browser,
) -> None:
    await browser.login("admin")
    navigation = await browser.head("/?a=1")
    assert navigation.status_code == 303
    assert navigation.headers["location"] == "/_2fa/challenge?next=%2F%3Fa%3D1"
    api = await browser.head("/api/me", accept="application/json")
    assert api.status_code == 401
    assert api.headers["content-type"] == "application/json"
    assert api.content == b""
