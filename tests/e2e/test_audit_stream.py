"""The demo (configured by core_from_env with TWOFA_REDIS_URL) keeps its audit events in
the per-portal stream that ``twofa audit tail`` shows."""

from __future__ import annotations

import asyncio
import io
import json
import re

import pytest

from tests.e2e.conftest import Browser, Portal
from twofa_middleware.cli import main


async def tail(portal: Portal, name: str, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    monkeypatch.setenv("TWOFA_REDIS_URL", portal.env["TWOFA_REDIS_URL"])
    out, err = io.StringIO(), io.StringIO()
    # main() runs its own event loop: off this one.
    code = await asyncio.to_thread(main, ["audit", "tail", name, "--json"], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    events: list[dict[str, str]] = json.loads(out.getvalue())
    return events


async def test_flow_events_reach_the_stream_without_codes_or_contacts(
    portal: Portal, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    await browser.login("admin")
    assert (await browser.get("/")).status_code == 303  # challenged
    wrong = await browser.post_json("/_2fa/challenge/email/verify", {"code": "000000"})
    assert wrong.status_code in (400, 403)
    code = await browser.email_code("admin@acme.test")
    ok = await browser.post_json("/_2fa/challenge/email/verify", {"code": code})
    assert ok.status_code == 200

    events = await tail(portal, "acme", monkeypatch)
    # The demo seeds its policies at start-up: that is a policy change by "demo".
    seeded = [e for e in events if e["event"] == "policy_set"]
    assert [e["actor"] for e in seeded] == ["demo"]
    events = [e for e in events if e["event"] != "policy_set"]
    names = [e["event"] for e in events]
    assert names[0] == "challenge"
    assert "code_sent" in names and names[-1] == "verified"
    challenge = events[0]
    assert (challenge["portal"], challenge["user"], challenge["reason"]) == (
        "acme",
        "admin",
        "new_device",
    )
    assert challenge["ip"] == "198.51.100.10"
    verified = events[-1]
    assert verified["method"] == "email"
    # Who, from where, with what: enough for an audit sink to notify the user of a
    # sign-in from a new browser.
    assert verified["new_device"] is True
    assert all(e["user_agent"].startswith("python-httpx/") for e in events)
    failed = [e for e in events if e["event"] == "verification_failed"]
    assert [(e["method"], e["outcome"]) for e in failed] == [("email", "wrong")]
    # Everything but the timestamps and stream ids (long digit runs of their own).
    text = json.dumps([{k: v for k, v in e.items() if k not in ("at", "id")} for e in events])
    assert code not in text
    assert not re.search(r"\d{6}", text)  # no code of any kind
    assert "@" not in text and "+1555" not in text
    globex = await tail(portal, "globex", monkeypatch)
    assert [e["event"] for e in globex] == ["policy_set"]
