from __future__ import annotations

from tests.e2e.conftest import Browser


async def test_admin_passes_email_challenge(browser: Browser) -> None:
    await browser.login("admin")
    r = await browser.get("/")
    assert r.status_code == 303
    assert r.headers["location"] == "/_2fa/challenge?next=%2F"
    await browser.pass_email("admin")
    r = await browser.get_json("/api/me")
    assert r.status_code == 200
    assert r.json()["twofa_reason"] == "device_trusted"
