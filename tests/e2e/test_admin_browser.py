"""A real browser (Debian's Chromium driven by Playwright) enables 2FA and saves settings."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import Portal

CHROMIUM = os.environ.get("TWOFA_TEST_CHROMIUM", "/usr/bin/chromium")
# Playwright cannot download its own browser here; Debian's Chromium is used instead.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def test_admin_enables_2fa_and_saves_settings_in_a_browser(
    portal: Portal, tmp_path: Path
) -> None:
    if portal.framework != "starlette":
        pytest.skip("the page is the same in every example; one browser run is enough")
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    from playwright.async_api import async_playwright

    base = portal.url.replace("127.0.0.1", "localhost")  # Host "localhost" = portal acme
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = await browser.new_page()
        try:
            await page.goto(f"{base}/login")
            await page.select_option("select[name=username]", "admin")
            await page.fill("input[name=password]", "demo")
            await page.click("form[action='/login'] button")
            await page.wait_for_url(re.compile(r"/_2fa/challenge\?next=%2F$"))

            await page.locator("form[action$='/challenge/email/send'] button").click()
            await page.wait_for_url(re.compile(r"sent=email"))
            received = await portal.smtp.wait_for("admin@acme.test")
            body = received.message.get_body(preferencelist=("plain",))
            assert body is not None
            code = re.search(r"\b(\d{6})\b", body.get_content())
            assert code
            await page.fill("#code-email", code.group(1))
            await page.locator("form[action$='/challenge/email/verify'] button").click()
            await page.wait_for_url(f"{base}/")
            assert "Welcome, admin" in await page.content()

            # Switch 2FA off and save, then on again with tuned settings.
            await page.click("text=Portal 2FA settings")
            await page.wait_for_url(f"{base}/_2fa/admin")
            await page.uncheck("#enforce")
            await page.click("#save")
            await page.wait_for_url(f"{base}/_2fa/admin?saved=1")
            assert not await page.is_checked("#enforce")

            await page.check("#enforce")
            await page.check("#method_email")
            await page.check("#method_totp")
            await page.check("#group_administrator")
            await page.check("#ip_change_only")
            await page.fill("#reauth_hours", "12")
            await page.fill("#ip_verification_hours", "")
            await page.click("#save")
            await page.wait_for_url(f"{base}/_2fa/admin?saved=1")
            assert "Saved." in await page.content()
            await page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)

            answer = await page.request.get(
                f"{base}/_2fa/admin", headers={"accept": "application/json"}
            )
            assert await answer.json() == {
                "portal": "acme",
                "policy": {
                    "enforce": True,
                    "methods": ["email", "totp"],
                    "groups": ["administrator"],
                    "ip_change_only": True,
                    "reauth_hours": 12,
                    "ip_verification_hours": None,
                },
            }
        finally:
            await browser.close()
