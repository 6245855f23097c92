"""Each second factor end to end, as a browser (HTML forms) and as an API client (JSON).

Codes come from where a user would read them: the real SMTP server, the real SMS
gateway, and an authenticator app (pyotp) that reads the server's injected clock.
"""

from __future__ import annotations

import re
from email.message import EmailMessage
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pyotp
import pytest

from tests.e2e.conftest import CSRF, Browser, Portal, PortalFactory, wait_for_sms

DAY = 86400.0
STEP = 30.0
ADMIN_EMAIL = "admin@acme.test"
ADMIN_PHONE = "+15550100"
DEVICE_COOKIE = "twofa_device_acme"
RECOVERY_CODE = re.compile(r"^[a-z2-9]{5}-[a-z2-9]{5}$")
# What the demo admin on acme can verify with before any authenticator is enrolled.
EMAIL_AND_SMS = [{"name": "email", "enrolled": True}, {"name": "sms", "enrolled": True}]
APP_SETUP_LINK = 'href="/_2fa/enroll/totp?next=/"'
REPLACES_APP = "Setting up a new one replaces it"


@pytest.fixture
def app_only(start_portal: PortalFactory) -> Portal:
    """The demo with acme allowing only an authenticator app: before enrolling one a
    user has nothing to verify with, so enrolling right after password login is the
    only way in (docs/decisions.md, "Nothing enrolled")."""
    return start_portal({"acme": {"enforce": True, "methods": ["totp"]}})


# --- helpers -----------------------------------------------------------------------


def csrf_of(page: httpx.Response) -> str:
    match = CSRF.search(page.text)
    assert match, page.text
    return match.group(1)


def assert_device_cookie(response: httpx.Response) -> None:
    """The device cookie is set HttpOnly, SameSite=Lax, for the whole site, not Secure
    (plain http on localhost)."""
    cookies = [c for c in response.headers.get_list("set-cookie") if c.startswith(DEVICE_COOKIE)]
    assert len(cookies) == 1, response.headers
    attributes = [a.strip().lower() for a in cookies[0].split(";")[1:]]
    assert "httponly" in attributes
    assert "samesite=lax" in attributes
    assert "path=/" in attributes
    assert "secure" not in attributes


def totp_now(portal: Portal, secret: str) -> str:
    return pyotp.TOTP(secret).at(portal.clock())


async def me_reason(browser: Browser) -> str | None:
    response = await browser.get_json("/api/me")
    body = response.json()
    return body["twofa_reason"] if response.status_code == 200 else body["reason"]


async def enroll_totp(browser: Browser) -> tuple[str, list[str]]:
    """Enroll an authenticator app over JSON: (secret, recovery codes).

    The user must be allowed to enroll now: verified (e.g. ``pass_email``), or with
    nothing to verify with yet (the ``app_only`` portal)."""
    start = await browser.post_json("/_2fa/enroll/totp", {})
    assert start.status_code == 200, start.text
    secret = start.json()["secret"]
    confirm = await browser.post_json(
        "/_2fa/enroll/totp", {"code": totp_now(browser.portal, secret)}
    )
    assert confirm.status_code == 200, confirm.text
    return secret, confirm.json()["recovery_codes"]


def six_digits(text: str) -> str:
    match = re.search(r"\b(\d{6})\b", text)
    assert match, text
    return match.group(1)


async def code_from_email(portal: Portal, to: str) -> str:
    return six_digits(parts((await portal.smtp.wait_for(to)).message)[0])


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


# --- the challenge endpoint --------------------------------------------------------


async def test_the_challenge_lists_the_methods_with_enrolled_flags_and_the_reason(
    browser: Browser,
) -> None:
    await browser.login("admin")
    response = await browser.get_json("/_2fa/challenge?next=/api/me")
    assert response.status_code == 200
    assert response.json() == {
        "reason": "new_device",
        "verified": False,
        "methods": EMAIL_AND_SMS,
        "next": "/api/me",
    }


async def test_the_challenge_reports_verified_once_the_browser_is_trusted(
    browser: Browser,
) -> None:
    await browser.login("admin")
    await browser.pass_email("admin")
    body = (await browser.get_json("/_2fa/challenge")).json()
    assert body["verified"] is True
    assert body["reason"] == "device_trusted"


async def test_the_challenge_page_of_a_verified_browser_offers_to_continue(
    browser: Browser,
) -> None:
    await browser.login("admin")
    await browser.pass_email("admin")
    page = await browser.get("/_2fa/challenge?next=%2Fapi%2Fme")
    assert page.status_code == 200
    assert "You are verified" in page.text
    assert '<a href="/api/me">Continue</a>' in page.text


async def test_the_challenge_page_offers_codes_by_email_and_sms_but_no_app_setup_before_verifying(
    browser: Browser,
) -> None:
    await browser.login("admin")
    page = await browser.get("/_2fa/challenge?next=%2F")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'action="/_2fa/challenge/email/send"' in page.text
    assert 'action="/_2fa/challenge/email/verify"' in page.text
    assert 'action="/_2fa/challenge/sms/send"' in page.text
    assert 'action="/_2fa/challenge/sms/verify"' in page.text
    assert "/_2fa/enroll/totp" not in page.text
    assert "Set up an authenticator app" not in page.text
    assert 'action="/_2fa/challenge/totp/verify"' not in page.text
    assert 'action="/_2fa/challenge/recovery/verify"' not in page.text


async def test_the_app_receives_the_decision_in_scope_twofa(browser: Browser) -> None:
    await browser.login("worker")
    await browser.pass_email("worker")
    response = await browser.get_json("/api/me")
    assert response.json() == {
        "user": "worker",
        "group": "worker",
        "portal": "acme",
        "twofa_reason": "device_trusted",
    }


# --- email ---------------------------------------------------------------------------


async def test_email_code_by_html_forms_redirects_to_next_and_sets_the_device_cookie(
    portal: Portal, browser: Browser
) -> None:
    await browser.login("admin")
    gate = await browser.get("/api/me?view=full")
    assert gate.status_code == 303
    page = await browser.get(gate.headers["location"])
    token = csrf_of(page)
    target = "/api/me?view=full"

    sent = await browser.post_form(
        "/_2fa/challenge/email/send", {"csrf_token": token, "next": target}
    )
    assert sent.status_code == 303
    location = urlsplit(sent.headers["location"])
    assert location.path == "/_2fa/challenge"
    assert parse_qs(location.query) == {"next": [target], "sent": ["email"]}
    notice = await browser.get(sent.headers["location"])
    assert "We sent you a new code" in notice.text

    message = (await portal.smtp.wait_for(ADMIN_EMAIL)).message
    text, html = parts(message)
    code = six_digits(text)
    assert code in html
    assert code not in message["subject"]
    assert "Acme Corp" in message["subject"]

    verified = await browser.post_form(
        "/_2fa/challenge/email/verify",
        {"csrf_token": csrf_of(notice), "next": target, "code": code},
    )
    assert verified.status_code == 303
    assert verified.headers["location"] == target
    assert_device_cookie(verified)
    assert (await browser.get(target)).status_code == 200
    assert await me_reason(browser) == "device_trusted"


async def test_email_code_by_json_answers_verified_with_next_and_sets_the_device_cookie(
    browser: Browser,
) -> None:
    await browser.login("admin")
    sent = await browser.post_json("/_2fa/challenge/email/send", {})
    assert sent.status_code == 200
    assert sent.json() == {"sent": True, "method": "email", "expires_in": 300}
    code = await code_from_email(browser.portal, ADMIN_EMAIL)
    verified = await browser.post_json(
        "/_2fa/challenge/email/verify", {"code": code, "next": "/api/me?x=1"}
    )
    assert verified.status_code == 200
    assert verified.json() == {"verified": True, "next": "/api/me?x=1"}
    assert_device_cookie(verified)
    assert await me_reason(browser) == "device_trusted"


async def test_an_email_code_works_only_once(portal: Portal, browser: Browser) -> None:
    await browser.login("admin")
    code = await browser.email_code(ADMIN_EMAIL)
    first = await browser.post_json("/_2fa/challenge/email/verify", {"code": code})
    assert first.status_code == 200
    async with portal.browser(ip=browser.ip) as other:
        await other.login("admin")
        again = await other.post_json("/_2fa/challenge/email/verify", {"code": code})
        assert again.status_code == 400
        assert again.json()["error"] == "invalid_code"
        assert await me_reason(other) == "new_device"


async def test_an_email_code_expires_after_five_minutes(portal: Portal, browser: Browser) -> None:
    portal.clock.freeze()
    await browser.login("admin")
    code = await browser.email_code(ADMIN_EMAIL)
    portal.clock.advance(301)
    response = await browser.post_json("/_2fa/challenge/email/verify", {"code": code})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_code"
    assert await me_reason(browser) == "new_device"


async def test_a_wrong_email_code_answers_400_with_attempts_left(browser: Browser) -> None:
    await browser.login("admin")
    code = await browser.email_code(ADMIN_EMAIL)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    response = await browser.post_json("/_2fa/challenge/email/verify", {"code": wrong})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_code"
    assert response.json()["attempts_left"] == 4
    assert "set-cookie" not in response.headers
    assert await me_reason(browser) == "new_device"


async def test_a_wrong_code_in_the_html_form_shows_the_challenge_again_with_attempts_left(
    browser: Browser,
) -> None:
    await browser.login("admin")
    code = await browser.email_code(ADMIN_EMAIL)
    page = await browser.get("/_2fa/challenge?next=%2Fapi%2Fme")
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    response = await browser.post_form(
        "/_2fa/challenge/email/verify",
        {"csrf_token": csrf_of(page), "next": "/api/me", "code": wrong},
    )
    assert response.status_code == 400
    assert "Attempts left: 4" in response.text
    assert 'action="/_2fa/challenge/email/verify"' in response.text
    assert 'name="next" value="/api/me"' in response.text
    assert "set-cookie" not in response.headers
    # The page's fresh form still takes the right code.
    retry = await browser.post_form(
        "/_2fa/challenge/email/verify",
        {"csrf_token": csrf_of(response), "next": "/api/me", "code": code},
    )
    assert retry.status_code == 303
    assert retry.headers["location"] == "/api/me"


# --- sms -------------------------------------------------------------------------------


async def test_sms_code_by_html_forms_redirects_to_next_and_sets_the_device_cookie(
    portal: Portal, browser: Browser
) -> None:
    await browser.login("admin")
    page = await browser.get("/_2fa/challenge?next=%2F")
    token = csrf_of(page)
    seen = len(portal.sms.requests)
    sent = await browser.post_form("/_2fa/challenge/sms/send", {"csrf_token": token, "next": "/"})
    assert sent.status_code == 303
    assert sent.headers["location"] == "/_2fa/challenge?next=%2F&sent=sms"
    code = await wait_for_sms(portal.sms, ADMIN_PHONE, seen)
    verified = await browser.post_form(
        "/_2fa/challenge/sms/verify", {"csrf_token": token, "next": "/", "code": code}
    )
    assert verified.status_code == 303
    assert verified.headers["location"] == "/"
    assert_device_cookie(verified)
    assert (await browser.get("/")).status_code == 200


async def test_sms_code_by_json_reaches_the_gateway_and_verifies(
    portal: Portal, browser: Browser
) -> None:
    await browser.login("admin")
    code = await browser.sms_code(ADMIN_PHONE)
    request = next(r for r in portal.sms.requests if r.json["to"] == ADMIN_PHONE)
    assert request.json["body"].startswith("Acme Corp")
    verified = await browser.post_json("/_2fa/challenge/sms/verify", {"code": code})
    assert verified.status_code == 200
    assert verified.json() == {"verified": True, "next": "/"}
    assert_device_cookie(verified)
    assert await me_reason(browser) == "device_trusted"


async def test_an_email_code_does_not_verify_as_an_sms_code(browser: Browser) -> None:
    await browser.login("admin")
    code = await browser.email_code(ADMIN_EMAIL)
    response = await browser.post_json("/_2fa/challenge/sms/verify", {"code": code})
    assert response.status_code == 400
    assert await me_reason(browser) == "new_device"


# --- who may enroll an authenticator app -----------------------------------------------
# Confirming an enrollment counts as a verification, so enrolling needs a current
# second factor, except for a user with nothing to verify with yet.


async def test_a_password_alone_cannot_enroll_an_app_for_a_user_who_has_email_and_a_phone(
    browser: Browser,
) -> None:
    await browser.login("admin")
    page = await browser.get_json("/_2fa/enroll/totp")
    assert page.status_code == 403
    assert page.json() == {"allowed": False}
    assert (await browser.get("/_2fa/enroll/totp")).status_code == 403
    refused = await browser.post_json("/_2fa/enroll/totp", {})
    assert refused.status_code == 403
    assert refused.json()["error"] == "enrollment_not_allowed"
    assert "secret" not in refused.json()
    by_form = await browser.post_form("/_2fa/enroll/totp", {"csrf_token": await browser.csrf()})
    assert by_form.status_code == 403
    assert "<svg" not in by_form.text
    # Nor is a code taken as a confirmation.
    confirm = await browser.post_json("/_2fa/enroll/totp", {"code": "123456"})
    assert confirm.status_code == 403
    assert "set-cookie" not in confirm.headers
    # The challenge offers what the user can verify with, and no app setup.
    challenge = (await browser.get_json("/_2fa/challenge")).json()
    assert challenge["methods"] == EMAIL_AND_SMS
    assert await me_reason(browser) == "new_device"


async def test_after_passing_an_email_code_the_user_may_enroll_an_app(browser: Browser) -> None:
    await browser.login("admin")
    await browser.pass_email("admin")
    page = await browser.get_json("/_2fa/enroll/totp")
    assert page.status_code == 200
    assert page.json() == {"allowed": True, "enrolled": False}
    intro = await browser.get("/_2fa/enroll/totp")
    assert intro.status_code == 200
    assert REPLACES_APP not in intro.text
    challenge = (await browser.get_json("/_2fa/challenge")).json()
    assert challenge["verified"] is True
    assert challenge["methods"] == [*EMAIL_AND_SMS, {"name": "totp", "enrolled": False}]
    assert APP_SETUP_LINK in (await browser.get("/_2fa/challenge?next=%2F")).text
    await enroll_totp(browser)
    methods = (await browser.get_json("/_2fa/challenge")).json()["methods"]
    assert {"name": "totp", "enrolled": True} in methods
    assert {"name": "recovery", "enrolled": True} in methods
    # Starting again is allowed (a current factor), and the page says what it replaces.
    again = await browser.get_json("/_2fa/enroll/totp")
    assert again.json() == {"allowed": True, "enrolled": True}
    assert REPLACES_APP in (await browser.get("/_2fa/enroll/totp")).text


async def test_a_user_with_nothing_to_verify_with_may_enroll_an_app_right_after_login(
    app_only: Portal,
) -> None:
    async with app_only.browser() as b:
        await b.login("admin")
        page = await b.get_json("/_2fa/enroll/totp")
        assert page.status_code == 200
        assert page.json() == {"allowed": True, "enrolled": False}
        challenge = (await b.get_json("/_2fa/challenge")).json()
        assert challenge["verified"] is False
        assert challenge["methods"] == [{"name": "totp", "enrolled": False}]
        html = await b.get("/_2fa/challenge?next=%2F")
        assert "Set up an authenticator app" in html.text
        assert APP_SETUP_LINK in html.text
        # Confirming the enrollment is the verification.
        assert await me_reason(b) == "new_device"
        await enroll_totp(b)
        assert await me_reason(b) == "device_trusted"
    # Now the user has something to verify with: a password alone enrolls nothing more.
    async with app_only.browser() as other:
        await other.login("admin")
        assert (await other.get_json("/_2fa/enroll/totp")).json() == {"allowed": False}
        assert (await other.post_json("/_2fa/enroll/totp", {})).status_code == 403
        methods = (await other.get_json("/_2fa/challenge")).json()["methods"]
        assert methods == [
            {"name": "totp", "enrolled": True},
            {"name": "recovery", "enrolled": True},
        ]
        assert await me_reason(other) == "new_device"


# --- authenticator app (TOTP) ----------------------------------------------------------


async def test_totp_enrollment_right_after_login_on_an_app_only_portal_answers_an_otpauth_uri(
    app_only: Portal,
) -> None:
    async with app_only.browser() as b:
        await b.login("admin")
        start = await b.post_json("/_2fa/enroll/totp", {})
        assert start.status_code == 200
        body = start.json()
        assert re.fullmatch(r"[A-Z2-7]{32}", body["secret"])
        uri = urlsplit(body["otpauth_uri"])
        assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
        query = parse_qs(uri.query)
        assert query["secret"] == [body["secret"]]
        assert "Acme Corp" in query["issuer"][0]
        assert unquote(uri.path) == "/twofa (Acme Corp):" + ADMIN_EMAIL
        # Starting is not verifying.
        assert await me_reason(b) == "new_device"


async def test_confirming_totp_answers_recovery_codes_and_counts_as_a_verification(
    app_only: Portal,
) -> None:
    async with app_only.browser() as b:
        await b.login("admin")
        start = await b.post_json("/_2fa/enroll/totp", {})
        secret = start.json()["secret"]
        confirm = await b.post_json(
            "/_2fa/enroll/totp", {"code": totp_now(app_only, secret), "next": "/api/me"}
        )
        assert confirm.status_code == 200
        body = confirm.json()
        assert body["verified"] is True
        assert body["next"] == "/api/me"
        codes = body["recovery_codes"]
        assert len(codes) >= 8
        assert len(set(codes)) == len(codes)
        assert all(RECOVERY_CODE.match(c) for c in codes)
        assert_device_cookie(confirm)
        assert await me_reason(b) == "device_trusted"
        methods = (await b.get_json("/_2fa/challenge")).json()["methods"]
        assert {"name": "totp", "enrolled": True} in methods
        assert {"name": "recovery", "enrolled": True} in methods


async def test_a_wrong_code_does_not_confirm_a_totp_enrollment(
    portal: Portal, browser: Browser
) -> None:
    await browser.login("admin")
    await browser.pass_email("admin")
    secret = (await browser.post_json("/_2fa/enroll/totp", {})).json()["secret"]
    right = totp_now(portal, secret)
    wrong = f"{(int(right) + 1) % 10**6:06d}"
    response = await browser.post_json("/_2fa/enroll/totp", {"code": wrong})
    assert response.status_code == 400
    assert "recovery_codes" not in response.json()
    assert "set-cookie" not in response.headers
    methods = (await browser.get_json("/_2fa/challenge")).json()["methods"]
    assert {"name": "totp", "enrolled": False} in methods
    assert {"name": "recovery", "enrolled": True} not in methods


async def test_totp_enrollment_by_html_from_the_challenge_link_shows_a_qr_code_then_recovery_codes(
    app_only: Portal,
) -> None:
    async with app_only.browser() as b:
        await b.login("admin")
        gate = await b.get("/api/me")
        assert gate.status_code == 303
        challenge = await b.get(gate.headers["location"])
        link = re.search(r'href="(/_2fa/enroll/totp\?next=[^"]+)"', challenge.text)
        assert link, challenge.text
        intro = await b.get(link.group(1))
        assert intro.status_code == 200
        started = await b.post_form(
            "/_2fa/enroll/totp", {"csrf_token": csrf_of(intro), "next": "/api/me"}
        )
        assert started.status_code == 200
        assert re.search(r'<div class="qr">\s*<svg', started.text)
        assert "<img" not in started.text
        match = re.search(r"<code>([A-Z2-7]{32})</code>", started.text)
        assert match, started.text
        secret = match.group(1)

        confirmed = await b.post_form(
            "/_2fa/enroll/totp",
            {
                "csrf_token": csrf_of(started),
                "next": "/api/me",
                "code": totp_now(app_only, secret),
            },
        )
        assert confirmed.status_code == 200
        codes = re.findall(r"<li>([a-z2-9]{5}-[a-z2-9]{5})</li>", confirmed.text)
        assert len(codes) >= 8
        assert 'href="/api/me"' in confirmed.text
        assert_device_cookie(confirmed)
        assert (await b.get("/api/me")).status_code == 200


async def test_a_wrong_code_on_the_html_enrollment_page_asks_to_start_again(
    portal: Portal, browser: Browser
) -> None:
    await browser.login("admin")
    await browser.pass_email("admin")
    intro = await browser.get("/_2fa/enroll/totp")
    started = await browser.post_form("/_2fa/enroll/totp", {"csrf_token": csrf_of(intro)})
    match = re.search(r"<code>([A-Z2-7]{32})</code>", started.text)
    assert match
    wrong = f"{(int(totp_now(portal, match.group(1))) + 1) % 10**6:06d}"
    response = await browser.post_form(
        "/_2fa/enroll/totp", {"csrf_token": csrf_of(started), "code": wrong}
    )
    assert response.status_code == 400
    assert "That code is not valid. Start again." in response.text
    assert "<svg" not in response.text
    assert "set-cookie" not in response.headers


async def test_a_totp_code_verifies_when_reauthentication_is_due(
    portal: Portal, browser: Browser
) -> None:
    await browser.login("admin")
    await browser.pass_email("admin")
    secret, _ = await enroll_totp(browser)
    portal.clock.advance(DAY + STEP)
    assert await me_reason(browser) == "reauth_due"
    verified = await browser.post_json(
        "/_2fa/challenge/totp/verify", {"code": totp_now(portal, secret)}
    )
    assert verified.status_code == 200
    assert verified.json() == {"verified": True, "next": "/"}
    assert await me_reason(browser) == "device_trusted"


async def test_a_totp_code_verifies_a_new_browser_by_html_form(portal: Portal) -> None:
    async with portal.browser() as first:
        await first.login("admin")
        await first.pass_email("admin")
        secret, _ = await enroll_totp(first)
    portal.clock.advance(STEP)  # the confirming step is used up
    async with portal.browser() as b:
        await b.login("admin")
        page = await b.get("/_2fa/challenge?next=%2F")
        assert 'action="/_2fa/challenge/totp/verify"' in page.text
        verified = await b.post_form(
            "/_2fa/challenge/totp/verify",
            {"csrf_token": csrf_of(page), "next": "/", "code": totp_now(portal, secret)},
        )
        assert verified.status_code == 303
        assert verified.headers["location"] == "/"
        assert_device_cookie(verified)
        assert await me_reason(b) == "device_trusted"


async def test_the_code_that_confirmed_the_enrollment_cannot_sign_in_again(
    portal: Portal,
) -> None:
    async with portal.browser() as first:
        await first.login("admin")
        await first.pass_email("admin")
        start = await first.post_json("/_2fa/enroll/totp", {})
        secret = start.json()["secret"]
        code = totp_now(portal, secret)
        assert (await first.post_json("/_2fa/enroll/totp", {"code": code})).status_code == 200
    async with portal.browser() as b:
        await b.login("admin")
        response = await b.post_json("/_2fa/challenge/totp/verify", {"code": code})
        assert response.status_code == 400
        assert await me_reason(b) == "new_device"


async def test_a_second_enrollment_is_refused_403_while_challenged(
    portal: Portal, browser: Browser
) -> None:
    await browser.login("admin")
    await browser.pass_email("admin")
    await enroll_totp(browser)
    portal.clock.advance(DAY + STEP)
    assert await me_reason(browser) == "reauth_due"
    refused = await browser.post_json("/_2fa/enroll/totp", {})
    assert refused.status_code == 403
    assert refused.json()["error"] == "enrollment_not_allowed"
    assert "secret" not in refused.json()
    page = await browser.get_json("/_2fa/enroll/totp")
    assert page.status_code == 403
    assert page.json() == {"allowed": False}
    assert (await browser.get("/_2fa/enroll/totp")).status_code == 403
    # Another browser, never verified, is refused too.
    async with portal.browser() as other:
        await other.login("admin")
        assert (await other.post_json("/_2fa/enroll/totp", {})).status_code == 403


async def test_a_second_enrollment_with_a_current_factor_replaces_the_authenticator(
    portal: Portal, browser: Browser
) -> None:
    await browser.login("admin")
    await browser.pass_email("admin")
    old_secret, _ = await enroll_totp(browser)
    portal.clock.advance(STEP)
    new_secret, _ = await enroll_totp(browser)
    assert new_secret != old_secret
    portal.clock.advance(STEP)
    async with portal.browser() as b:
        await b.login("admin")
        old = await b.post_json(
            "/_2fa/challenge/totp/verify", {"code": totp_now(portal, old_secret)}
        )
        assert old.status_code == 400
        new = await b.post_json(
            "/_2fa/challenge/totp/verify", {"code": totp_now(portal, new_secret)}
        )
        assert new.status_code == 200


# --- recovery codes ----------------------------------------------------------------------


async def test_a_recovery_code_verifies_once_and_fails_the_second_time(portal: Portal) -> None:
    async with portal.browser() as first:
        await first.login("admin")
        await first.pass_email("admin")
        _, codes = await enroll_totp(first)
    async with portal.browser() as b:
        await b.login("admin")
        used = await b.post_json("/_2fa/challenge/recovery/verify", {"code": codes[0]})
        assert used.status_code == 200
        assert used.json() == {"verified": True, "next": "/"}
        assert_device_cookie(used)
        assert await me_reason(b) == "device_trusted"
        remaining = await b.get_json("/_2fa/recovery")
        assert remaining.json() == {"remaining": len(codes) - 1}
    async with portal.browser() as b:
        await b.login("admin")
        again = await b.post_json("/_2fa/challenge/recovery/verify", {"code": codes[0]})
        assert again.status_code == 400
        assert again.json()["error"] == "invalid_code"
        assert await me_reason(b) == "new_device"


async def test_a_recovery_code_verifies_by_html_form(portal: Portal) -> None:
    async with portal.browser() as first:
        await first.login("admin")
        await first.pass_email("admin")
        _, codes = await enroll_totp(first)
    async with portal.browser() as b:
        await b.login("admin")
        page = await b.get("/_2fa/challenge?next=%2F")
        assert 'action="/_2fa/challenge/recovery/verify"' in page.text
        verified = await b.post_form(
            "/_2fa/challenge/recovery/verify",
            {"csrf_token": csrf_of(page), "next": "/", "code": codes[1]},
        )
        assert verified.status_code == 303
        assert verified.headers["location"] == "/"
        assert_device_cookie(verified)


async def test_regenerating_recovery_codes_invalidates_the_old_ones(portal: Portal) -> None:
    async with portal.browser() as first:
        await first.login("admin")
        await first.pass_email("admin")
        _, old_codes = await enroll_totp(first)
        regenerated = await first.post_json("/_2fa/recovery", {})
        assert regenerated.status_code == 200
        new_codes = regenerated.json()["recovery_codes"]
        assert len(new_codes) >= 8
        assert not set(new_codes) & set(old_codes)
    async with portal.browser() as b:
        await b.login("admin")
        old = await b.post_json("/_2fa/challenge/recovery/verify", {"code": old_codes[0]})
        assert old.status_code == 400
        new = await b.post_json("/_2fa/challenge/recovery/verify", {"code": new_codes[0]})
        assert new.status_code == 200


async def test_regenerating_recovery_codes_by_html_form_shows_the_new_codes(
    browser: Browser,
) -> None:
    await browser.login("admin")
    await browser.pass_email("admin")
    _, old_codes = await enroll_totp(browser)
    page = await browser.get("/_2fa/recovery")
    assert page.status_code == 200
    assert f"You have {len(old_codes)} unused recovery codes" in page.text
    shown = await browser.post_form("/_2fa/recovery", {"csrf_token": csrf_of(page), "next": "/"})
    assert shown.status_code == 200
    codes = re.findall(r"<li>([a-z2-9]{5}-[a-z2-9]{5})</li>", shown.text)
    assert len(codes) >= 8
    assert not set(codes) & set(old_codes)


async def test_regenerating_recovery_codes_needs_a_current_verification(
    portal: Portal, browser: Browser
) -> None:
    await browser.login("admin")
    await browser.pass_email("admin")
    _, codes = await enroll_totp(browser)
    portal.clock.advance(DAY)
    refused = await browser.post_json("/_2fa/recovery", {})
    assert refused.status_code == 403
    assert "recovery_codes" not in refused.json()
    assert (await browser.get_json("/_2fa/recovery")).status_code == 403
    # The old codes still work.
    used = await browser.post_json("/_2fa/challenge/recovery/verify", {"code": codes[0]})
    assert used.status_code == 200


# --- methods allowed by the policy ----------------------------------------------------


async def test_only_the_methods_the_policy_allows_are_offered(app_only: Portal) -> None:
    async with app_only.browser() as b:
        await b.login("admin")
        challenge = (await b.get_json("/_2fa/challenge")).json()
        assert challenge["methods"] == [{"name": "totp", "enrolled": False}]
        page = await b.get("/_2fa/challenge")
        assert "/_2fa/challenge/email/" not in page.text
        assert "/_2fa/challenge/sms/" not in page.text
        for path in (
            "/_2fa/challenge/email/send",
            "/_2fa/challenge/sms/send",
            "/_2fa/challenge/email/verify",
        ):
            response = await b.post_json(path, {"code": "123456"})
            assert response.status_code == 403, path
            assert response.json()["error"] == "method_not_allowed"
        assert app_only.smtp.messages == []
        assert app_only.sms.requests == []

        await enroll_totp(b)
        methods = (await b.get_json("/_2fa/challenge")).json()["methods"]
        assert methods == [
            {"name": "totp", "enrolled": True},
            {"name": "recovery", "enrolled": True},
        ]


async def test_an_authenticator_app_cannot_be_enrolled_where_the_policy_does_not_allow_it(
    start_portal: PortalFactory,
) -> None:
    portal = start_portal({"acme": {"enforce": True, "methods": ["email", "sms"]}})
    async with portal.browser() as b:
        await b.login("admin")
        methods = (await b.get_json("/_2fa/challenge")).json()["methods"]
        assert [m["name"] for m in methods] == ["email", "sms"]
        refused = await b.post_json("/_2fa/enroll/totp", {})
        assert refused.status_code == 403
        assert "secret" not in refused.json()
        verify = await b.post_json("/_2fa/challenge/totp/verify", {"code": "123456"})
        assert verify.status_code == 403
