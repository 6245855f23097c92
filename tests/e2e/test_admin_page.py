"""The portal administrator's page, through HTTP, in every example."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import EXAMPLES, Browser, Portal
from tests.support.redis_server import free_port

ADMIN = "/_2fa/admin"
FULL_FORM = {
    "enforce": "on",
    "method_email": "on",
    "method_totp": "on",
    "group_administrator": "on",
    "group_worker": "on",
    "reauth_hours": "12",
    "ip_verification_hours": "168",
}


async def verified_admin(portal: Portal) -> Browser:
    admin = portal.browser()
    await admin.login("admin")
    await admin.pass_email("admin")
    return admin


async def test_admin_sees_the_switch_and_the_five_settings(portal: Portal) -> None:
    admin = await verified_admin(portal)
    page = await admin.get(ADMIN)
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    text = page.text
    assert "Enforce 2-Factor Authentication" in text
    assert "Edit 2-Factor Authentication Settings" in text
    for label in (
        "Verification methods",
        "Users to enforce 2FA for",
        "Enforce on IP change only",
        "Re-authentication duration (hours)",
        "IP verification duration (hours)",
    ):
        assert label in text
    assert "None selected means all methods are allowed." in text
    assert "codes by text message or email can be intercepted" in text
    assert "None selected means every user." in text
    assert "Default 24; empty means never." in text
    assert "Default 720; empty means never." in text
    # The demo's acme policy is shown as it is.
    assert re.search(r'name="enforce" id="enforce" checked', text)
    await admin.aclose()


async def test_saving_the_form_changes_the_policy_for_everyone(portal: Portal) -> None:
    admin = await verified_admin(portal)
    worker = portal.browser(ip="198.51.100.20")
    await worker.login("worker")
    assert (await worker.get_json("/api/me")).json()["reason"] == "new_device"

    token = await admin.csrf(ADMIN)
    form = {**FULL_FORM, "csrf_token": token}
    del form["enforce"]  # switch 2FA off for acme
    saved = await admin.post_form(ADMIN, form)
    assert saved.status_code == 303
    assert saved.headers["location"] == f"{ADMIN}?saved=1"
    page = await admin.get(f"{ADMIN}?saved=1")
    assert "Saved." in page.text

    policy = (await admin.get_json(ADMIN)).json()["policy"]
    assert policy == {
        "enforce": False,
        "methods": ["email", "totp"],
        "groups": ["administrator", "worker"],
        "ip_change_only": False,
        "reauth_hours": 12,
        "ip_verification_hours": 168,
    }
    me = await worker.get_json("/api/me")
    assert me.status_code == 200
    assert me.json()["twofa_reason"] == "not_enforced"
    await worker.aclose()
    await admin.aclose()


async def test_json_changes_only_the_named_settings(portal: Portal) -> None:
    admin = await verified_admin(portal)
    answer = await admin.post_json(ADMIN, {"ip_change_only": True, "reauth_hours": None})
    assert answer.status_code == 200, answer.text
    policy = answer.json()["policy"]
    assert policy["enforce"] is True
    assert policy["ip_change_only"] is True
    assert policy["reauth_hours"] is None
    assert policy["ip_verification_hours"] == 720
    await admin.aclose()


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        pytest.param(
            {"reauth_hours": "-3"},
            "reauth_hours",
            "Enter a positive number of hours, or leave it empty for never.",
            id="negative-duration-is-refused-beside-its-field",
        ),
        pytest.param(
            {"ip_verification_hours": "soon"},
            "ip_verification_hours",
            "Enter a positive number of hours, or leave it empty for never.",
            id="words-are-refused-beside-the-field",
        ),
    ],
)
async def test_bad_form_values_are_shown_beside_the_field(
    portal: Portal, change: dict[str, str], field: str, message: str
) -> None:
    admin = await verified_admin(portal)
    before = (await admin.get_json(ADMIN)).json()["policy"]
    token = await admin.csrf(ADMIN)
    answer = await admin.post_form(ADMIN, {**FULL_FORM, **change, "csrf_token": token})
    assert answer.status_code == 400
    assert f'<p class="error" id="{field}-error">{message}</p>' in answer.text
    assert (await admin.get_json(ADMIN)).json()["policy"] == before
    await admin.aclose()


async def test_bad_json_names_the_field(portal: Portal) -> None:
    admin = await verified_admin(portal)
    answer = await admin.post_json(ADMIN, {"methods": ["fax"]})
    assert answer.status_code == 400
    assert answer.json() == {
        "error": "invalid_policy",
        "field": "methods",
        "message": "methods contains 'fax'; allowed values are email, totp, sms (empty means all)",
    }
    await admin.aclose()


async def test_a_change_that_would_lock_the_admin_out_is_refused(portal: Portal) -> None:
    # The admin has email and a phone but no authenticator app.
    admin = await verified_admin(portal)
    answer = await admin.post_json(ADMIN, {"methods": ["totp"]})
    assert answer.status_code == 400
    assert answer.json()["field"] == "methods"
    assert "You could not sign in with these settings" in answer.json()["message"]
    token = await admin.csrf(ADMIN)
    form = {k: v for k, v in FULL_FORM.items() if k != "method_email"} | {"csrf_token": token}
    page = await admin.post_form(ADMIN, form)
    assert page.status_code == 400
    assert "set up an authenticator app first" in page.text
    assert (await admin.get_json(ADMIN)).json()["policy"]["methods"] == []
    await admin.aclose()


async def test_only_administrators_reach_the_page(portal: Portal) -> None:
    worker = portal.browser()
    await worker.login("worker")
    await worker.pass_email("worker")
    assert (await worker.get(ADMIN)).status_code == 403
    assert (await worker.post_json(ADMIN, {"enforce": False})).status_code == 403
    await worker.aclose()


async def test_an_unverified_administrator_is_sent_to_the_challenge(portal: Portal) -> None:
    admin = portal.browser()
    await admin.login("admin")
    page = await admin.get(ADMIN)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/_2fa/challenge?next=")
    assert (await admin.post_json(ADMIN, {"enforce": False})).status_code == 401
    await admin.aclose()


async def test_an_administrator_of_another_portal_is_refused(portal: Portal) -> None:
    admin = await verified_admin(portal)
    # The acme session presented on globex: the identity names acme, the host globex.
    admin.host = "globex.localhost"
    assert (await admin.get_json(ADMIN)).status_code == 403
    await admin.aclose()


async def test_form_without_csrf_token_is_refused(portal: Portal) -> None:
    admin = await verified_admin(portal)
    answer = await admin.post_form(ADMIN, dict(FULL_FORM))
    assert answer.status_code == 403
    assert (await admin.get_json(ADMIN)).json()["policy"]["reauth_hours"] == 24
    await admin.aclose()


@pytest.fixture
def second_process(portal: Portal) -> Iterator[str]:
    """The same demo in another OS process, on the same Redis: another worker."""
    if portal.framework != "starlette":
        pytest.skip("one framework is enough to show cross-process invalidation")
    port = free_port()
    env = {**os.environ, **portal.env, "PYTHONPATH": str(Path.cwd())}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(EXAMPLES),
            "portal_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        try:
            httpx.get(f"{url}/health", timeout=0.5)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the second demo process did not start") from None
            time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_a_saved_change_reaches_another_process_within_a_second(
    portal: Portal, second_process: str
) -> None:
    admin = await verified_admin(portal)
    other = Browser(portal, "acme.localhost", "198.51.100.30")
    await other.client.aclose()
    other.client = httpx.AsyncClient(base_url=second_process, timeout=10)
    await other.login("worker")
    # Warm the other process's policy cache with "enforced".
    for _ in range(3):
        assert (await other.get_json("/api/me")).json()["reason"] == "new_device"

    answer = await admin.post_json(ADMIN, {"enforce": False})
    assert answer.status_code == 200
    changed = time.monotonic()
    while True:
        me = await other.get_json("/api/me")
        if me.status_code == 200:
            break
        assert time.monotonic() - changed < 1.0, "the other process still enforces"
    assert time.monotonic() - changed < 1.0
    assert me.json()["twofa_reason"] == "not_enforced"
    await other.aclose()
    await admin.aclose()
