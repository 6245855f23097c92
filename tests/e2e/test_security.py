"""Security end to end: the demo under a real server, real Redis, SMTP and SMS gateway.

Attacks go through HTTP only, as a browser or a script would send them. Numbers in
the docstrings are SECURITY.md items. Time moves through the injected clock, but
attempt counters and send cooldowns expire by Redis TTL: those tests let the TTL
run out through a raw Redis client instead of waiting.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pyotp
import pytest
import redis.asyncio as aioredis
from itsdangerous import URLSafeTimedSerializer
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.e2e.conftest import (
    CSRF,
    HTML,
    JSON,
    SECRET,
    Browser,
    Clock,
    Portal,
    demo_env,
    serve_example,
)
from tests.support.redis_server import RedisServer
from tests.support.sms_gateway import Gateway
from tests.support.smtp_server import SmtpServer
from twofa_middleware.crypto import Keyring
from twofa_middleware.keys import user_key

DEVICE = "twofa_device_acme"
SESSION = "demo_session"
ADMIN_MAIL = "admin@acme.test"
ADMIN_PHONE = "+15550100"
VERIFY = "/_2fa/challenge/{}/verify"
SEND = "/_2fa/challenge/{}/send"
NEXT_FIELD = re.compile(r'name="next" value="([^"]*)"')
NONCE = re.compile(r"nonce=\"[^\"]*\"|nonce-[^\"';\s]*")


# --- fixtures and helpers ----------------------------------------------------


async def _whoami(websocket: WebSocket) -> None:
    """A WebSocket endpoint for the tests: accepts, says who the gate let through."""
    await websocket.accept()
    info = websocket.scope.get("twofa")
    await websocket.send_text(info.identity.id if info and info.identity else "anonymous")
    await websocket.close()


@dataclass
class CustomPortal(Portal):
    # Whether the app got the tests' /ws route (ASGI apps with a Starlette router).
    ws_route: bool = False


PortalStarter = Callable[..., CustomPortal]


@pytest.fixture
def custom_portal(
    redis_url: str, redis_server: RedisServer, smtp: SmtpServer, sms: Gateway, framework: str
) -> Iterator[PortalStarter]:
    """Start the demo with other core options (``max_failures=...``) or policies (JSON).

    Starlette-based examples also get a ``/ws`` route, so a refused handshake can
    be told apart from one the app refuses itself.
    """
    with ExitStack() as stack:

        def start(*, policies: str | None = None, **options: Any) -> CustomPortal:
            clock = Clock()
            env = demo_env(redis_url, smtp, sms)
            if policies is not None:
                env["TWOFA_PORTALS"] = policies
            routed: list[bool] = []

            def add_ws_route(app: Any) -> None:
                router = getattr(app, "router", None)
                if router is not None:
                    router.routes.append(WebSocketRoute("/ws", _whoami))
                    routed.append(True)

            url, kind = serve_example(stack, framework, env, clock, add_ws_route, **options)
            return CustomPortal(
                url, clock, smtp, sms, redis_server, env, framework, kind, bool(routed)
            )

        yield start


@pytest.fixture
async def open_browser() -> AsyncIterator[Callable[..., Browser]]:
    """Browsers on any portal, closed at the end of the test."""
    opened: list[Browser] = []

    def open_(portal: Portal, host: str = "acme.localhost", ip: str = "198.51.100.10") -> Browser:
        browser = portal.browser(host, ip)
        opened.append(browser)
        return browser

    yield open_
    for browser in opened:
        await browser.aclose()


async def expire_now(client: aioredis.Redis, name: str) -> None:
    """Let a key's Redis TTL run out now, as if its window had passed."""
    assert await client.pexpire(name, 1), f"{name} does not exist"
    deadline = time.monotonic() + 5
    while await client.exists(name):
        assert time.monotonic() < deadline, f"{name} did not expire"
        await asyncio.sleep(0.005)


def other_code(code: str) -> str:
    """A code of the right shape that is certainly not ``code``."""
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def verify(browser: Browser, code: str, method: str = "email") -> httpx.Response:
    return await browser.post_json(VERIFY.format(method), {"code": code})


async def logged_in(
    open_browser: Callable[..., Browser], portal: Portal, user: str = "admin", **kw: str
) -> Browser:
    browser = open_browser(portal, **kw)
    await browser.login(user)
    return browser


async def enroll_totp(browser: Browser) -> tuple[pyotp.TOTP, str]:
    """Enroll the admin's authenticator app over the JSON API (after an email code,
    as enrolling needs a current second factor); the TOTP and the confirming code."""
    await browser.pass_email("admin")
    started = await browser.post_json("/_2fa/enroll/totp", {})
    assert started.status_code == 200, started.text
    totp = pyotp.TOTP(started.json()["secret"])
    code = totp.at(browser.portal.clock())
    confirmed = await browser.post_json("/_2fa/enroll/totp", {"code": code})
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["verified"] is True
    return totp, code


def mails_to(portal: Portal, to: str) -> int:
    return sum(to in r.rcpt_tos for r in portal.smtp.received)


def without_nonce(text: str) -> str:
    return NONCE.sub("nonce", text)


def error_of(response: httpx.Response) -> str | None:
    """The ``error`` of a JSON answer (the middleware's), else None."""
    if not response.headers.get("content-type", "").startswith("application/json"):
        return None
    body = response.json()
    return body.get("error") if isinstance(body, dict) else None


def gated(response: httpx.Response) -> bool:
    """Answered by the gate (a challenge), not by the app."""
    if response.status_code == 303:
        return response.headers["location"].startswith("/_2fa/challenge?next=")
    return response.status_code == 401 and (
        not response.content or error_of(response) == "two_factor_required"
    )


def skip_without_websockets(portal: Portal) -> None:
    if portal.kind == "wsgi":
        pytest.skip("WSGI has no WebSockets")
    if portal.framework.startswith("django"):
        # The middleware runs inside Django, whose ASGI handler refuses every
        # WebSocket itself (Channels would need the ASGI middleware around it).
        pytest.skip("Django's ASGI handler serves no WebSockets")


# --- 1. replay (items 19, 21-23, 25, 27) --------------------------------------


async def test_a_used_email_code_is_refused_from_the_same_and_from_another_browser(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    first = await logged_in(open_browser, portal)
    second = await logged_in(open_browser, portal)
    code = await first.email_code(ADMIN_MAIL)
    assert (await verify(first, code)).status_code == 200

    again = await verify(first, code)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_code"
    elsewhere = await verify(second, code)
    assert elsewhere.status_code == 400
    assert (await second.get_json("/api/me")).status_code == 401


async def test_a_used_totp_step_is_refused_and_a_fresh_step_works_once(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    enroller = await logged_in(open_browser, portal)
    second = await logged_in(open_browser, portal)
    third = await logged_in(open_browser, portal)
    totp, enrolment_code = await enroll_totp(enroller)

    # The code that confirmed the enrollment cannot then sign in elsewhere (25).
    replayed = await verify(second, enrolment_code, "totp")
    assert replayed.status_code == 400, replayed.text

    portal.clock.advance(30)
    fresh = totp.at(portal.clock())
    assert (await verify(second, fresh, "totp")).status_code == 200
    # Once: neither another browser nor the same one can use that step again (19).
    assert (await verify(third, fresh, "totp")).status_code == 400
    assert (await verify(second, fresh, "totp")).status_code == 400
    # Nor the older step, still inside the ±1 window.
    assert (await verify(third, totp.at(portal.clock() - 30), "totp")).status_code == 400
    assert (await third.get_json("/api/me")).status_code == 401


async def test_a_resend_invalidates_the_previous_code(
    portal: Portal, open_browser: Callable[..., Browser], raw_redis: aioredis.Redis
) -> None:
    browser = await logged_in(open_browser, portal)
    old = await browser.email_code(ADMIN_MAIL)
    # The resend cooldown is a Redis TTL: let it pass.
    await expire_now(raw_redis, user_key("acme", "admin", "claim:send:email"))
    new = await browser.email_code(ADMIN_MAIL)
    assert old != new

    assert (await verify(browser, old)).status_code == 400
    assert (await verify(browser, new)).status_code == 200


@pytest.mark.parametrize("as_json", [True, False], ids=["json-verify", "form-verify"])
async def test_replaying_a_successful_verify_gets_no_new_device_cookie(
    portal: Portal, open_browser: Callable[..., Browser], as_json: bool
) -> None:
    browser = await logged_in(open_browser, portal)
    if as_json:
        code = await browser.email_code(ADMIN_MAIL)
        first = await verify(browser, code)
        assert first.status_code == 200
    else:
        token = await browser.csrf()
        code = await browser.email_code(ADMIN_MAIL)
        first = await browser.post_form(VERIFY.format("email"), {"csrf_token": token, "code": code})
        assert first.status_code == 303
    assert DEVICE in first.headers["set-cookie"]

    replayed = await browser.replay(first.request)
    assert replayed.status_code == 400
    assert "set-cookie" not in replayed.headers


# --- 2. attempts and lockout (items 10-14, 18) --------------------------------


async def test_five_wrong_codes_count_down_then_even_the_right_code_gets_429(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    browser = await logged_in(open_browser, portal)
    code = await browser.email_code(ADMIN_MAIL)
    wrong = other_code(code)
    left = []
    for _ in range(5):
        response = await verify(browser, wrong)
        assert response.status_code == 400
        left.append(response.json()["attempts_left"])
    assert left == [4, 3, 2, 1, 0]

    right = await verify(browser, code)
    assert right.status_code == 429
    assert int(right.headers["retry-after"]) > 0
    # During the lockout the right code and a wrong one look the same (18).
    still_wrong = await verify(browser, wrong)
    assert (still_wrong.status_code, still_wrong.content) == (right.status_code, right.content)
    assert set(still_wrong.headers) == set(right.headers)
    assert (await browser.get_json("/api/me")).status_code == 401


async def test_during_a_lockout_the_right_code_and_a_wrong_one_get_the_same_page(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    browser = await logged_in(open_browser, portal)
    token = await browser.csrf()
    code = await browser.email_code(ADMIN_MAIL)
    for left in (4, 3, 2, 1, 0):
        page = await browser.post_form(
            VERIFY.format("email"), {"csrf_token": token, "code": other_code(code)}
        )
        assert page.status_code == 400
        assert f"Attempts left: {left}." in page.text

    pages = [
        await browser.post_form(VERIFY.format("email"), {"csrf_token": token, "code": c})
        for c in (code, other_code(code))
    ]
    assert [p.status_code for p in pages] == [429, 429]
    assert without_nonce(pages[0].text) == without_nonce(pages[1].text)
    assert all("retry-after" in p.headers for p in pages)


async def test_failures_count_across_methods_and_survive_logout_and_login(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    browser = await logged_in(open_browser, portal)
    code = await browser.email_code(ADMIN_MAIL)
    for _ in range(3):
        assert (await verify(browser, other_code(code))).status_code == 400
    sms = await verify(browser, "000000", "sms")
    assert sms.status_code == 400
    assert sms.json()["attempts_left"] == 1

    # A new app session (password accepted again) resets nothing (11, 12).
    assert (await browser.post_form("/logout", {})).status_code == 303
    old_session = browser.client.cookies.get(SESSION)
    await browser.login("admin")
    assert browser.client.cookies.get(SESSION) != old_session
    last = await verify(browser, other_code(code))
    assert last.status_code == 400
    assert last.json()["attempts_left"] == 0
    assert (await verify(browser, code)).status_code == 429


async def test_after_the_back_off_a_correct_code_is_accepted_and_the_count_restarts(
    portal: Portal, open_browser: Callable[..., Browser], raw_redis: aioredis.Redis
) -> None:
    browser = await logged_in(open_browser, portal)
    for _ in range(5):
        assert (await verify(browser, "000000")).status_code == 400
    assert (await verify(browser, "000000")).status_code == 429

    # The failure window is a Redis TTL, not the injected clock: let it run out.
    await expire_now(raw_redis, user_key("acme", "admin", "count:fail"))
    code = await browser.sms_code(ADMIN_PHONE)
    assert (await verify(browser, code, "sms")).status_code == 200
    # Success resets the count: a later mistake starts again from the top.
    again = await verify(browser, "000000")
    assert again.status_code == 400
    assert again.json()["attempts_left"] == 4


async def test_concurrent_guesses_are_counted_atomically(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    """Twelve guesses at once with a budget of five: exactly five are evaluated (14)."""
    browser = await logged_in(open_browser, portal)
    await browser.email_code(ADMIN_MAIL)
    answers = await asyncio.gather(*(verify(browser, f"{n:06d}") for n in range(100_000, 100_012)))
    assert sorted(a.status_code for a in answers) == [400] * 5 + [429] * 7


async def test_one_ip_guessing_for_many_users_is_throttled(
    custom_portal: PortalStarter, open_browser: Callable[..., Browser]
) -> None:
    """A per-IP cap across accounts (13), next to the per-user one."""
    portal = custom_portal(ip_max_failures=10)
    spray = "203.0.113.7"
    users = {}
    for name, tries in (("admin", 4), ("worker", 4), ("client", 2)):
        users[name] = await logged_in(open_browser, portal, name, ip=spray)
        for _ in range(tries):
            assert (await verify(users[name], "000000")).status_code == 400

    # The client has only two failures of its own, but this IP has spent its ten.
    throttled = await verify(users["client"], "000000")
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) > 0
    elsewhere = await logged_in(open_browser, portal, "client", ip="203.0.113.99")
    assert (await verify(elsewhere, "000000")).status_code == 400


async def test_one_ip_asking_codes_for_many_users_is_throttled(
    custom_portal: PortalStarter, open_browser: Callable[..., Browser]
) -> None:
    """SMS pumping or mail bombing from one address through several accounts (85)."""
    portal = custom_portal(ip_max_sends_per_hour=1)
    spray = "203.0.113.8"
    admin = await logged_in(open_browser, portal, "admin", ip=spray)
    await admin.email_code(ADMIN_MAIL)
    worker = await logged_in(open_browser, portal, "worker", ip=spray)
    refused = await worker.post_json(SEND.format("email"), {})
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    # Another address is not affected.
    elsewhere = await logged_in(open_browser, portal, "client", ip="203.0.113.98")
    await elsewhere.email_code("client@acme.test")
    assert mails_to(portal, "client@acme.test") == 1


# --- 3. races (items 14, 21) ---------------------------------------------------


async def test_eight_concurrent_submissions_of_one_email_code_yield_exactly_one_success(
    custom_portal: PortalStarter, open_browser: Callable[..., Browser]
) -> None:
    # A budget above eight, so every submission is evaluated and only the
    # single use of the code decides.
    portal = custom_portal(max_failures=20)
    browsers = [await logged_in(open_browser, portal) for _ in range(8)]
    code = await browsers[0].email_code(ADMIN_MAIL)

    answers = await asyncio.gather(*(verify(b, code) for b in browsers))
    assert sorted(a.status_code for a in answers) == [200] + [400] * 7
    me = [(await b.get_json("/api/me")).status_code for b in browsers]
    assert me == [200 if a.status_code == 200 else 401 for a in answers]


async def test_eight_concurrent_submissions_of_one_totp_code_yield_exactly_one_success(
    custom_portal: PortalStarter, open_browser: Callable[..., Browser]
) -> None:
    portal = custom_portal(max_failures=20)
    enroller = await logged_in(open_browser, portal)
    totp, _ = await enroll_totp(enroller)
    browsers = [await logged_in(open_browser, portal) for _ in range(8)]
    portal.clock.advance(30)
    code = totp.at(portal.clock())

    answers = await asyncio.gather(*(verify(b, code, "totp") for b in browsers))
    assert sorted(a.status_code for a in answers) == [200] + [400] * 7


# --- 4. redirects (items 59, 61) -------------------------------------------------

OFF_SITE = {
    "absolute-url": "https://evil.test",
    "scheme-relative": "//evil.test",
    "slash-backslash": "/\\evil.test",
    "backslashes": "\\\\evil.test",
    "scheme-without-slashes": "https:evil.test",
    "javascript": "javascript:alert(1)",
    "own-host-absolute": "http://acme.localhost/x",
    "encoded-crlf": "/%0d%0aSet-Cookie:x=1",
    "raw-crlf": "/\r\nSet-Cookie: x=1",
    "encoded-backslash": "/%5Cevil.test",
    "encoded-tab": "/%09/evil.test",
    "encoded-double-slash": "/%2F%2Fevil.test",
}


@pytest.mark.parametrize("target", list(OFF_SITE.values()), ids=list(OFF_SITE))
async def test_verify_never_redirects_off_site(
    portal: Portal, open_browser: Callable[..., Browser], target: str
) -> None:
    browser = await logged_in(open_browser, portal)
    page = await browser.get(f"/_2fa/challenge?next={quote(target, safe='')}")
    assert page.status_code == 200
    assert set(NEXT_FIELD.findall(page.text)) == {"/"}

    token = await browser.csrf()
    code = await browser.email_code(ADMIN_MAIL)
    done = await browser.post_form(
        VERIFY.format("email"), {"csrf_token": token, "code": code, "next": target}
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/"
    assert "x=1" not in done.headers.get("set-cookie", "")


async def test_a_same_site_next_is_kept_through_the_challenge(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    browser = await logged_in(open_browser, portal)
    challenge = await browser.get("/api/me?x=1&y=2")
    assert challenge.headers["location"] == "/_2fa/challenge?next=%2Fapi%2Fme%3Fx%3D1%26y%3D2"
    page = await browser.get(challenge.headers["location"])
    assert NEXT_FIELD.findall(page.text)[0] == "/api/me?x=1&amp;y=2"

    token = CSRF.search(page.text)
    assert token
    code = await browser.email_code(ADMIN_MAIL)
    done = await browser.post_form(
        VERIFY.format("email"),
        {"csrf_token": token.group(1), "code": code, "next": "/api/me?x=1&y=2"},
    )
    assert done.headers["location"] == "/api/me?x=1&y=2"


async def test_the_challenge_location_is_relative_whatever_the_host_headers_say(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    browser = await logged_in(open_browser, portal)
    forwarded = await browser.get("/deep?a=1", **{"x-forwarded-host": "evil.test"})
    assert forwarded.status_code == 303
    assert forwarded.headers["location"] == "/_2fa/challenge?next=%2Fdeep%3Fa%3D1"

    browser.host = "evil.test"  # unknown hosts are the default portal, acme
    spoofed = await browser.get("/deep?a=1")
    assert spoofed.headers["location"] == "/_2fa/challenge?next=%2Fdeep%3Fa%3D1"
    api = await browser.get_json("/api/me")
    assert api.json()["challenge_url"] == "/_2fa/challenge?next=%2Fapi%2Fme"

    # A path that looks like a network-path reference does not become one in next
    # (WSGI servers may already have made it "/evil.test/x": a same-site path).
    double = await browser.raw("GET", "//evil.test/x", accept=HTML["accept"])
    assert double.status_code == 303
    location = double.headers["location"]
    assert location.startswith("/_2fa/challenge?next=%2F")
    assert not unquote(location.split("=", 1)[1]).startswith(("//", "/\\"))


# --- 5. CSRF (items 63, 64) --------------------------------------------------------


async def _foreign_token(kind: str, portal: Portal, open_browser: Callable[..., Browser]) -> str:
    if kind == "missing":
        return ""
    if kind == "forged":
        return "WyJhY21lIiwiYWRtaW4iXQ.forged.signature"
    if kind == "other-user":
        other = await logged_in(open_browser, portal, "worker")
    else:
        other = await logged_in(open_browser, portal, "admin", host="globex.localhost")
    return await other.csrf()


CSRF_KINDS = ["missing", "forged", "other-user", "other-portal"]


@pytest.mark.parametrize("kind", CSRF_KINDS)
async def test_a_form_send_without_a_valid_csrf_token_sends_nothing(
    portal: Portal, open_browser: Callable[..., Browser], kind: str
) -> None:
    browser = await logged_in(open_browser, portal)
    token = await _foreign_token(kind, portal, open_browser)
    form = {"csrf_token": token} if token else {}
    refused = await browser.post_form(SEND.format("email"), form)
    assert refused.status_code == 403

    # Had it sent a code, the send cooldown would refuse this one, and two mails
    # would arrive.
    await browser.email_code(ADMIN_MAIL)
    assert mails_to(portal, ADMIN_MAIL) == 1


@pytest.mark.parametrize("kind", CSRF_KINDS)
async def test_a_form_verify_without_a_valid_csrf_token_verifies_nothing(
    portal: Portal, open_browser: Callable[..., Browser], kind: str
) -> None:
    browser = await logged_in(open_browser, portal)
    token = await _foreign_token(kind, portal, open_browser)
    code = await browser.email_code(ADMIN_MAIL)
    form = {"code": code} | ({"csrf_token": token} if token else {})
    refused = await browser.post_form(VERIFY.format("email"), form)
    assert refused.status_code == 403
    assert "set-cookie" not in refused.headers
    assert (await browser.get_json("/api/me")).status_code == 401
    # The code was not even looked at: it still works, with the full budget.
    assert (await verify(browser, code)).status_code == 200


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
async def test_a_form_post_from_another_site_is_refused_even_with_a_valid_token(
    portal: Portal, open_browser: Callable[..., Browser], site: str
) -> None:
    """Fetch metadata first: "same-site" is a sibling subdomain, i.e. another portal."""
    browser = await logged_in(open_browser, portal)
    token = await browser.csrf()
    code = await browser.email_code(ADMIN_MAIL)
    form = {"csrf_token": token, "code": code}
    refused = await browser.post_form(VERIFY.format("email"), form, **{"sec-fetch-site": site})
    assert refused.status_code == 403
    assert (await browser.get_json("/api/me")).status_code == 401
    # Our own page's form, as a browser posts it under Referrer-Policy: no-referrer.
    own = {"sec-fetch-site": "same-origin", "origin": "null"}
    assert (await browser.post_form(VERIFY.format("email"), form, **own)).status_code == 303


@pytest.mark.parametrize(
    "header",
    [{"origin": "https://evil.test"}, {"origin": "null"}, {"sec-fetch-site": "cross-site"}],
    ids=["foreign-origin", "null-origin", "cross-site-fetch"],
)
async def test_a_cross_site_json_post_is_refused(
    portal: Portal, open_browser: Callable[..., Browser], header: dict[str, str]
) -> None:
    browser = await logged_in(open_browser, portal)
    sent = await browser.client.post(
        SEND.format("email"), json={}, headers=browser.headers(JSON | header)
    )
    assert sent.status_code == 403
    assert sent.json()["error"] == "csrf_failed"

    code = await browser.email_code(ADMIN_MAIL)
    verified = await browser.client.post(
        VERIFY.format("email"), json={"code": code}, headers=browser.headers(JSON | header)
    )
    assert verified.status_code == 403
    assert mails_to(portal, ADMIN_MAIL) == 1
    assert (await verify(browser, code)).status_code == 200


# --- 6. tampered cookies (items 40-42, 73, 98) ----------------------------------


async def _me_with(browser: Browser, device: str | None, name: str = DEVICE) -> httpx.Response:
    cookie = browser.cookie_header(**{DEVICE: None, name: device})
    return await browser.client.get("/api/me", headers=browser.headers(JSON | {"cookie": cookie}))


async def test_a_device_cookie_only_counts_for_its_own_user_portal_and_signature(
    custom_portal: PortalStarter, open_browser: Callable[..., Browser]
) -> None:
    # Both portals enforce for everyone, so a device cookie is what would let a
    # user through on either.
    portal = custom_portal(policies='{"acme": {"enforce": true}, "globex": {"enforce": true}}')
    admin = await logged_in(open_browser, portal)
    await admin.pass_email("admin")
    device = admin.client.cookies.get(DEVICE)
    assert device

    # Control: the cookie as issued is a trusted device, in a new session too.
    fresh = await logged_in(open_browser, portal)
    assert (await _me_with(fresh, device)).json()["twofa_reason"] == "device_trusted"

    # Change the signature's first character: its last one partly encodes padding
    # bits, so changing it may leave the decoded signature as it was.
    payload, signature = device.rsplit(".", 1)
    edited = f"{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    tampered = await _me_with(fresh, edited)
    assert (tampered.status_code, tampered.json()["reason"]) == (401, "new_device")

    worker = await logged_in(open_browser, portal, "worker")
    borrowed = await _me_with(worker, device)
    assert (borrowed.status_code, borrowed.json()["reason"]) == (401, "new_device")

    globex = await logged_in(open_browser, portal, host="globex.localhost")
    for name in (DEVICE, "twofa_device_globex"):
        moved = await _me_with(globex, device, name)
        assert (moved.status_code, moved.json()["reason"]) == (401, "new_device")


async def test_every_verification_rotates_the_device_cookie_and_voids_the_old_one(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    """A copy of an earlier device cookie never gains trust from a later verification."""
    admin = await logged_in(open_browser, portal)
    await admin.pass_email("admin")
    first = admin.client.cookies.get(DEVICE)
    assert first
    portal.clock.advance(24 * 3600)  # the reauth duration has passed: verify again
    await admin.pass_sms(ADMIN_PHONE)  # (the email resend cooldown runs on real time)
    second = admin.client.cookies.get(DEVICE)
    assert second and second != first

    fresh = await logged_in(open_browser, portal)
    stale = await _me_with(fresh, first)
    assert (stale.status_code, stale.json()["reason"]) == (401, "new_device")
    assert (await _me_with(fresh, second)).json()["twofa_reason"] == "device_trusted"


async def test_a_validly_signed_device_cookie_with_an_invented_token_is_a_new_device(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    """Trust comes from the server's record of the device, not from the signature."""
    admin = await logged_in(open_browser, portal)
    await admin.pass_email("admin")
    signer = URLSafeTimedSerializer(Keyring(SECRET).signing_key)
    issued = signer.loads(admin.client.cookies.get(DEVICE) or "", salt="twofa.device")
    assert issued[:2] == ["acme", "admin"]  # the forgery below is in the real format

    forged = signer.dumps(["acme", "admin", "chosen-by-the-attacker"], salt="twofa.device")
    other = await logged_in(open_browser, portal)
    answer = await _me_with(other, forged)
    assert (answer.status_code, answer.json()["reason"]) == (401, "new_device")


# --- 7. Redis down (items 94-98) -------------------------------------------------


async def test_with_redis_down_protected_requests_fail_closed_and_recover_by_themselves(
    custom_portal: PortalStarter, open_browser: Callable[..., Browser]
) -> None:
    # Policies from the environment: this is about the state store (the policies
    # kept in Redis are the next test's subject).
    portal = custom_portal(policies='{"acme": {"enforce": true}}')
    browser = await logged_in(open_browser, portal)
    await browser.pass_email("admin")
    assert (await browser.get_json("/api/me")).status_code == 200
    anonymous = open_browser(portal)

    portal.redis.stop()
    try:
        # The near-cache may answer until it learns the subscription is gone, which
        # takes at most its lease (1 s); from then on every request fails closed.
        deadline = time.monotonic() + 3
        while (status := (await browser.get_json("/api/me")).status_code) == 200:
            assert time.monotonic() < deadline, "still served from cache after the lease"
            await asyncio.sleep(0.05)
        assert status == 503
        page = await browser.get("/")
        assert page.status_code == 503
        assert page.headers["content-type"].startswith("text/html")
        for leak in ("Traceback", "Error", "redis", "Redis", "127.0.0.1"):
            assert leak not in page.text
        api = await browser.get_json("/api/me")
        assert api.status_code == 503
        assert api.json()["error"] == "unavailable"
        assert "retry-after" in api.headers
        assert (await verify(browser, "123456")).status_code == 503
        # What needs no Redis still works: exempt paths, anonymous visitors.
        assert (await browser.get_json("/health")).status_code == 200
        assert (await anonymous.get_json("/api/me")).json() == {"error": "not_authenticated"}
    finally:
        portal.redis.start()

    # Same port, same app: service resumes. The restarted Redis lost its data, so
    # the user is challenged again rather than refused.
    assert (await browser.get_json("/api/me")).status_code == 401
    assert gated(await browser.get("/"))
    await browser.pass_email("admin")
    assert (await browser.get_json("/api/me")).status_code == 200


async def test_a_redis_that_lost_its_data_does_not_switch_two_factor_off(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    """The demo's own set-up: policies in Redis, written by the admin page and the CLI."""
    browser = await logged_in(open_browser, portal)
    assert gated(await browser.get("/"))

    portal.redis.restart()  # nothing is persisted: every key is gone

    deadline = time.monotonic() + 3
    while (me := await browser.get_json("/api/me")).status_code == 503:
        assert time.monotonic() < deadline, "did not recover after the restart"
        await asyncio.sleep(0.05)
    assert me.status_code == 401, me.text
    assert gated(await browser.get("/"))


# --- 8. flow bypass (items 29, 30, 33) ---------------------------------------------

METHODS = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH"]


@pytest.mark.parametrize("method", METHODS)
async def test_every_method_on_every_path_is_gated_while_verification_is_due(
    portal: Portal, open_browser: Callable[..., Browser], method: str
) -> None:
    browser = await logged_in(open_browser, portal)
    for path in ("/", "/api/me", "/anything", "/static/app.js"):
        for accept in (HTML, JSON):
            response = await browser.client.request(
                method,
                path,
                headers=browser.headers(accept),
                json={"x": 1} if method in ("POST", "PUT", "PATCH") else None,
            )
            where = f"{method} {path} {accept['accept']}"
            assert gated(response), (where, response.status_code, response.text)
            navigation = method in ("GET", "HEAD") and accept is HTML
            assert response.status_code == (303 if navigation else 401), where
            assert response.headers["cache-control"] == "no-store", where


ODD_PATHS = {
    "dot-dot-out-of-prefix": "/_2fa/../api/me",
    "encoded-slashes-out-of-prefix": "/_2fa%2f..%2fapi/me",
    "upper-case-encoded-slashes": "/_2fa%2F..%2Fapi/me",
    "encoded-slash-in-app-path": "/api%2fme",
    "double-leading-slash": "//api/me",
    "upper-case-prefix": "/_2FA/challenge",
    "prefix-without-slash": "/_2fachallengeX",
    "matrix-parameter": "/_2fa/challenge;x",
    "dot-dot-out-of-challenge": "/_2fa/challenge/../../api/me",
    "dot-dot-out-of-login": "/login/../api/me",
    "dot-dot-out-of-health": "/health/../api/me",
    "encoded-dots": "/%2e%2e/api/me",
    "login-with-encoded-slash": "/login%2f..%2fapi/me",
    "trailing-slash-on-exempt": "/health/",
    "absolute-form-target": "http://acme.localhost/api/me",
}


@pytest.mark.parametrize("target", list(ODD_PATHS.values()), ids=list(ODD_PATHS))
async def test_odd_paths_are_never_served_by_the_app_while_verification_is_due(
    portal: Portal, open_browser: Callable[..., Browser], target: str
) -> None:
    browser = await logged_in(open_browser, portal)
    for method in ("GET", "POST"):
        response = await browser.raw(method, target)
        # Either the challenge, or the middleware's own 404 inside its prefix: the
        # app's pages (and its own 404) never answer.
        ours_404 = response.status_code == 404 and error_of(response) == "not_found"
        assert gated(response) or ours_404, (method, response.status_code, response.text)


async def test_the_middleware_endpoints_are_reachable_while_verification_is_due(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    """The counterpart of the above: the exact allowlist works (and nothing else)."""
    browser = await logged_in(open_browser, portal)
    assert (await browser.raw("GET", "/_2fa/challenge")).status_code == 200
    wrong_method = await browser.raw("GET", "/_2fa/challenge/email/verify?code=123456")
    assert wrong_method.status_code == 405


async def test_the_policy_admin_page_needs_a_fresh_second_factor_and_an_administrator(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    """The pending state grants nothing beyond the challenge (32), not even to an admin."""
    admin = await logged_in(open_browser, portal)
    switch_off = {"enforce": False}
    for response in (
        await admin.get_json("/_2fa/admin"),
        await admin.post_json("/_2fa/admin", switch_off),
    ):
        assert response.status_code == 401, response.text
        assert error_of(response) == "two_factor_required"

    worker = await logged_in(open_browser, portal, "worker")
    await worker.pass_email("worker")
    assert (await worker.get_json("/_2fa/admin")).status_code == 403
    assert (await worker.post_json("/_2fa/admin", switch_off)).status_code == 403

    await admin.pass_email("admin")
    assert (await admin.get_json("/_2fa/admin")).status_code == 200
    cross_site = await admin.client.post(
        "/_2fa/admin",
        json=switch_off,
        headers=admin.headers(JSON | {"origin": "https://evil.test"}),
    )
    assert cross_site.status_code == 403
    # Nothing above changed the policy: a new browser is still challenged.
    newcomer = await logged_in(open_browser, portal, "client")
    assert gated(await newcomer.get("/"))


@pytest.mark.parametrize("path", ["/ws", "/anything"], ids=["app-route", "unknown-path"])
async def test_a_websocket_is_refused_before_accept_while_verification_is_due(
    custom_portal: PortalStarter, open_browser: Callable[..., Browser], path: str
) -> None:
    portal = custom_portal()
    skip_without_websockets(portal)
    browser = await logged_in(open_browser, portal)
    port = httpx.URL(portal.url).port
    headers = {"cookie": browser.cookie_header(), "x-forwarded-for": browser.ip}

    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            f"ws://acme.localhost:{port}{path}",
            host="127.0.0.1",
            additional_headers=headers,
            open_timeout=5,
        ):
            pass
    assert refused.value.response.status_code == 403

    # Once verified, the same handshake reaches the app: the refusal was the gate's.
    await browser.pass_email("admin")
    headers["cookie"] = browser.cookie_header()
    if path == "/ws" and portal.ws_route:
        async with connect(
            f"ws://acme.localhost:{port}/ws",
            host="127.0.0.1",
            additional_headers=headers,
            open_timeout=5,
        ) as ws:
            assert await ws.recv() == "admin"


# --- 9. headers (items 38, 47-49, 66, 67, 88) --------------------------------------


async def test_middleware_pages_carry_the_protective_headers(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    browser = await logged_in(open_browser, portal)
    token = await browser.csrf()
    pages = {
        "challenge": await browser.get("/_2fa/challenge"),
        "enroll": await browser.get("/_2fa/enroll/totp"),
        "wrong code": await browser.post_form(
            VERIFY.format("email"), {"csrf_token": token, "code": "000000"}
        ),
        "csrf refusal": await browser.post_form(VERIFY.format("email"), {"code": "000000"}),
        "not found": await browser.get("/_2fa/nothing-here"),
    }
    for name, page in pages.items():
        headers = page.headers
        assert headers["content-type"] == "text/html; charset=utf-8", name
        assert headers["cache-control"] == "no-store", name
        assert headers["x-frame-options"] == "DENY", name
        assert headers["x-content-type-options"] == "nosniff", name
        assert headers["referrer-policy"] == "no-referrer", name
        assert "frame-ancestors 'none'" in headers["content-security-policy"], name


async def test_challenge_answers_and_the_device_cookie_are_never_cached(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    browser = await logged_in(open_browser, portal)
    redirect = await browser.get("/")
    assert redirect.headers["cache-control"] == "no-store"
    refused = await browser.get_json("/api/me")
    assert refused.status_code == 401
    assert refused.headers["cache-control"] == "no-store"
    assert refused.json()["error"] == "two_factor_required"

    code = await browser.email_code(ADMIN_MAIL)
    verified = await verify(browser, code)
    assert verified.headers["cache-control"] == "no-store"
    assert "cookie" in verified.headers["vary"].lower()
    cookie = verified.headers["set-cookie"]
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "path", "max-age", "samesite"} <= attributes
    assert "samesite=lax" in cookie.lower()
    assert "domain" not in attributes


async def test_a_code_never_appears_in_any_http_response(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    browser = await logged_in(open_browser, portal)
    seen: list[httpx.Response] = [await browser.get("/"), await browser.get("/_2fa/challenge")]
    token = await browser.csrf()
    seen.append(await browser.post_form(SEND.format("email"), {"csrf_token": token}))
    seen.append(await browser.get(seen[-1].headers["location"]))
    received = await portal.smtp.wait_for(ADMIN_MAIL)
    body = received.message.get_body(preferencelist=("plain",))
    assert body is not None
    match = re.search(r"\b(\d{6})\b", body.get_content())
    assert match
    code = match.group(1)
    for wrong in (other_code(code), code[:5]):
        seen.append(
            await browser.post_form(VERIFY.format("email"), {"csrf_token": token, "code": wrong})
        )
        seen.append(await verify(browser, wrong))
    seen.append(
        await browser.post_form(VERIFY.format("email"), {"csrf_token": token, "code": code})
    )
    assert seen[-1].status_code == 303
    seen.append(await browser.get("/"))
    seen.append(await browser.get_json("/_2fa/challenge"))

    for response in seen:
        assert code not in response.text, response.request.url
        for name, value in response.headers.items():
            assert code not in value, (response.request.url, name)


# --- 10. anonymous, exempt, other portal (items 99, 108, 109) -------------------


async def test_anonymous_visitors_reach_the_app_without_any_challenge(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    anonymous = open_browser(portal)
    home = await anonymous.get("/")
    assert home.status_code in (302, 303, 307)
    assert home.headers["location"].endswith("/login")
    assert (await anonymous.get_json("/api/me")).json() == {"error": "not_authenticated"}
    assert (await anonymous.get("/login")).status_code == 200
    assert (await anonymous.get_json("/health")).json() == {"ok": True}
    assert not any(c.name.startswith("twofa") for c in anonymous.client.cookies.jar)
    mine = await anonymous.get_json("/_2fa/challenge")
    assert (mine.status_code, mine.json()["error"]) == (401, "not_authenticated")


async def test_exempt_paths_pass_for_a_user_who_still_owes_verification(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    browser = await logged_in(open_browser, portal)
    assert gated(await browser.get("/"))
    assert (await browser.get_json("/health")).json() == {"ok": True}
    assert (await browser.get("/login")).status_code == 200
    out = await browser.post_form("/logout", {})
    assert out.status_code == 303
    assert out.headers["location"].endswith("/login")


async def test_a_session_of_one_portal_is_refused_on_another(
    portal: Portal, open_browser: Callable[..., Browser]
) -> None:
    browser = await logged_in(open_browser, portal)
    await browser.pass_email("admin")
    assert (await browser.get_json("/api/me")).status_code == 200

    # Browsers keep cookies per host; a script sends them anywhere.
    browser.host = "globex.localhost"
    for response in (await browser.get_json("/api/me"), await browser.get_json("/_2fa/challenge")):
        assert response.status_code == 403
        assert response.json()["error"] == "wrong_portal"
    assert (await browser.get("/")).status_code == 403
