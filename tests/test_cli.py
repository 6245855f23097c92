"""The ``twofa`` command line, in-process and as a real subprocess, on a real Redis."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.redis_server import free_port
from twofa_middleware import audit
from twofa_middleware.cli import main
from twofa_middleware.flow import FAIL_COUNTER
from twofa_middleware.keys import user_tag
from twofa_middleware.store import RedisStore


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


Run = Callable[..., Result]


@pytest.fixture
def twofa(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Run:
    """``twofa ARGS...`` in this process, with TWOFA_REDIS_URL pointing at the test Redis."""
    monkeypatch.setenv("TWOFA_REDIS_URL", redis_url)

    def run(*argv: str) -> Result:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), stdout=out, stderr=err)
        return Result(code, out.getvalue(), err.getvalue())

    return run


def one_line_error(result: Result, code: int = 1) -> str:
    assert result.code == code, (result.out, result.err)
    assert result.out == ""
    assert result.err.startswith("twofa: error: ")
    assert result.err.endswith("\n") and result.err.count("\n") == 1, result.err
    return result.err


# --- portals -----------------------------------------------------------------------


def test_portal_commands(twofa: Run) -> None:
    empty = twofa("portal", "list")
    assert (empty.code, empty.err) == (0, "")
    assert "no portal has a policy" in empty.out
    assert twofa("portal", "list", "--json").json() == []

    r = twofa(
        "portal",
        "set",
        "acme",
        "--methods",
        "email,totp",
        "--groups",
        "administrator,worker",
        "--ip-change-only",
        "--reauth-hours",
        "12",
        "--ip-verification-hours",
        "168",
    )
    assert r.code == 0, r.err
    assert "acme: methods: (no own policy) -> email, totp" in r.out
    assert "acme: reauth_hours: (no own policy) -> 12h" in r.out

    enabled = twofa("portal", "enable", "acme", "--json").json()
    assert enabled["changed"] == ["enforce"]
    assert enabled["before"]["enforce"] is False and enabled["after"]["enforce"] is True

    shown = twofa("portal", "show", "acme", "--json").json()
    assert shown == {
        "portal": "acme",
        "source": "own",
        "revoked_before": None,
        "policy": {
            "enforce": True,
            "methods": ["email", "totp"],
            "groups": ["administrator", "worker"],
            "ip_change_only": True,
            "reauth_hours": 12.0,
            "ip_verification_hours": 168.0,
        },
    }
    text = twofa("portal", "show", "acme").out
    assert "portal acme: its own policy" in text
    assert "methods:" in text and "email, totp" in text

    # 'never', empty lists (= all) and --no-ip-change-only.
    r = twofa(
        "portal",
        "set",
        "acme",
        "--reauth-hours",
        "never",
        "--methods",
        "",
        "--groups",
        "all",
        "--no-ip-change-only",
    )
    assert r.code == 0, r.err
    policy = twofa("portal", "show", "acme", "--json").json()["policy"]
    assert policy["reauth_hours"] is None
    assert policy["methods"] == policy["groups"] == []
    assert policy["ip_change_only"] is False

    listed = twofa("portal", "list", "--json").json()
    assert [p["portal"] for p in listed] == ["acme"]
    table = twofa("portal", "list").out.splitlines()
    assert table[0].split()[:2] == ["PORTAL", "ENFORCE"]
    assert table[1].split()[:3] == ["acme", "yes", "all"]

    disabled = twofa("portal", "disable", "acme")
    assert disabled.out == "acme: enforce: yes -> no\n"
    assert twofa("portal", "disable", "acme").out == "acme: nothing changed\n"

    # A portal without a policy of its own.
    assert twofa("portal", "show", "globex", "--json").json()["source"] == "none"
    assert "no policy configured" in twofa("portal", "show", "globex").out


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--methods", "email,pigeon"], "methods"),
        (["--methods", "email,,totp"], "methods"),
        (["--groups", "root"], "groups"),
        (["--reauth-hours", "soon"], "reauth_hours"),
        (["--reauth-hours", "0"], "reauth_hours"),
        (["--ip-verification-hours", "-3"], "ip_verification_hours"),
        (["--ip-verification-hours", "inf"], "ip_verification_hours"),
    ],
)
def test_bad_settings_are_one_line_naming_the_field(
    twofa: Run, argv: list[str], field: str
) -> None:
    err = one_line_error(twofa("portal", "set", "acme", *argv))
    assert err.startswith(f"twofa: error: {field} ")
    assert twofa("portal", "list", "--json").json() == []  # nothing written


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["portal"],
        ["portal", "frobnicate"],
        ["portal", "show"],
        ["portal", "set", "acme"],
        ["portal", "list", "--colour"],
        ["user", "status", "acme"],
        ["audit", "tail", "acme", "-n", "many"],
        ["audit", "tail", "acme", "-n", "0"],
    ],
)
def test_usage_errors_exit_2_with_one_line(twofa: Run, argv: list[str]) -> None:
    one_line_error(twofa(*argv), code=2)


def test_help_exits_0(twofa: Run, capsys: pytest.CaptureFixture[str]) -> None:
    assert twofa("portal", "set", "--help").code == 0
    assert "--ip-verification-hours" in capsys.readouterr().out


def test_missing_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWOFA_REDIS_URL", raising=False)
    out, err = io.StringIO(), io.StringIO()
    assert main(["portal", "list"], stdout=out, stderr=err) == 1
    assert err.getvalue().count("\n") == 1 and "TWOFA_REDIS_URL is not set" in err.getvalue()


def test_redis_down_is_one_line(twofa: Run) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    try:
        for argv in (
            ["portal", "list"],
            ["portal", "enable", "acme"],
            ["user", "status", "acme", "bob"],
            ["audit", "tail", "acme"],
        ):
            started = time.monotonic()
            err = one_line_error(twofa("--redis-url", url, *argv))
            assert "Traceback" not in err
            assert time.monotonic() - started < 10
    finally:
        audit.RedisAuditStream.shared(url).close()


def test_options_after_the_command(twofa: Run, redis_url: str) -> None:
    r = twofa(
        "portal",
        "enable",
        "acme",
        "--redis-url",
        redis_url,
        "--actor",
        "alice",
        "--reason",
        "pilot",
    )
    assert r.code == 0, r.err
    [event] = twofa("audit", "tail", "acme", "--json").json()
    assert (event["event"], event["actor"], event["reason"]) == ("policy_set", "alice", "pilot")


# --- users and revocation ----------------------------------------------------------


async def _seed(redis_url: str, now: float) -> None:
    """bob verified a minute ago from one device and IP, then failed five times."""
    store = RedisStore.from_url(redis_url)
    try:
        await store.record_verification("acme", "bob", "ab" * 32, "198.51.100.7", now - 60, 9e4)
        for _ in range(5):
            await store.hit(user_tag("acme", "bob"), FAIL_COUNTER, 900)
    finally:
        await store.close()


def test_user_commands(twofa: Run, redis_url: str) -> None:
    assert twofa("portal", "enable", "acme").code == 0
    now = time.time()
    asyncio.run(_seed(redis_url, now))

    status = twofa("user", "status", "acme", "bob", "--json").json()
    assert status["user"] == "bob" and status["portal"] == "acme"
    assert status["enrolled"] == {"totp": False, "recovery_codes_left": 0}
    assert status["last_verified_at"] == pytest.approx(now - 60)
    [device] = status["devices"]
    assert device["id"] == "ab" * 6 and device["trusted"] is True
    assert device["expires_at"] == pytest.approx(now - 60 + 24 * 3600)
    [ip] = status["ips"]
    assert ip["id"] == "198.51.100.7" and ip["trusted"] is True
    assert status["lockout"]["locked"] is True and status["lockout"]["failures"] == 5

    text = twofa("user", "status", "acme", "bob").out
    assert "user bob on portal acme" in text
    assert "198.51.100.7" in text and "LOCKED OUT" in text

    assert twofa("user", "unlock", "acme", "bob").out == "acme: bob: unlocked\n"
    assert not twofa("user", "status", "acme", "bob", "--json").json()["lockout"]["locked"]
    unlocked = twofa("user", "unlock", "acme", "bob", "--json").json()
    assert unlocked == {"portal": "acme", "user": "bob", "was_locked": False}

    revoked = twofa("portal", "revoke", "acme", "--json").json()
    assert revoked["revoked_before"] == pytest.approx(time.time(), abs=5)
    after = twofa("user", "status", "acme", "bob", "--json").json()
    assert after["devices"][0]["trusted"] is False
    assert after["ips"][0]["trusted"] is False
    assert after["revoked_before"] == revoked["revoked_before"]
    assert "every user verifies again" in twofa("portal", "revoke", "acme").out
    shown = twofa("portal", "show", "acme", "--json").json()
    assert shown["revoked_before"] is not None

    r = twofa("user", "reset", "acme", "bob", "--reason", "lost phone")
    assert r.code == 0 and "removed" in r.out
    status = twofa("user", "status", "acme", "bob", "--json").json()
    assert status["devices"] == status["ips"] == [] and status["last_verified_at"] is None


def test_user_revoke_asks_every_device_again_and_keeps_factors(twofa: Run, redis_url: str) -> None:
    asyncio.run(_seed(redis_url, time.time()))
    r = twofa("user", "revoke", "acme", "bob", "--reason", "password changed")
    assert (r.code, r.out) == (0, "acme: bob: every device and IP verifies again; factors kept\n")
    status = twofa("user", "status", "acme", "bob", "--json").json()
    assert status["devices"] == status["ips"] == []
    again = twofa("user", "revoke", "acme", "bob", "--json").json()
    assert again == {"portal": "acme", "user": "bob", "revoked": True}
    [event, _] = twofa("audit", "tail", "acme", "--json").json()
    assert (event["event"], event["reason"]) == ("user_trust_revoked", "password changed")


def test_audit_tail(twofa: Run) -> None:
    twofa("portal", "set", "acme", "--methods", "totp", "--actor", "alice", "--reason", "pilot")
    twofa("portal", "enable", "acme", "--actor", "alice")
    twofa("user", "reset", "acme", "bob@example.com")  # a user id that is an email
    twofa("user", "unlock", "acme", "bob")
    twofa("portal", "revoke", "acme", "--actor", "carol")

    events = twofa("audit", "tail", "acme", "--json").json()
    assert [e["event"] for e in events] == [
        "policy_set",
        "policy_set",
        "user_reset",
        "user_unlocked",
        "portal_revoked",
    ]
    first = events[0]
    assert (first["actor"], first["reason"], first["portal"]) == ("alice", "pilot", "acme")
    assert first["after"]["methods"] == ["totp"]
    assert events[1]["before"]["enforce"] is False and events[1]["after"]["enforce"] is True
    assert all(isinstance(e["at"], float) and e["id"] for e in events)

    last_two = twofa("audit", "tail", "acme", "-n", "2", "--json").json()
    assert [e["event"] for e in last_two] == ["user_unlocked", "portal_revoked"]
    text = twofa("audit", "tail", "acme", "-n", "2").out.splitlines()
    assert len(text) == 2
    assert "user_unlocked" in text[0] and "portal_revoked" in text[1]
    assert "actor=carol" in text[1]
    assert twofa("audit", "tail", "globex", "--json").json() == []


# --- as installed ------------------------------------------------------------------


def _run(command: list[str], *argv: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *argv],
        env={**os.environ, "TWOFA_REDIS_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_real_subprocess(redis_url: str) -> None:
    module = [sys.executable, "-m", "twofa_middleware.cli"]
    ok = _run(
        module, "portal", "set", "acme", "--methods", "email", "--reauth-hours", "2", url=redis_url
    )
    assert ok.returncode == 0, ok.stderr
    assert "acme: methods: (no own policy) -> email" in ok.stdout
    # The audit event reached the stream before that process exited.
    tail = _run(module, "audit", "tail", "acme", "--json", url=redis_url)
    assert [e["event"] for e in json.loads(tail.stdout)] == ["policy_set"]
    bad = _run(module, "portal", "set", "acme", "--methods", "fax", url=redis_url)
    assert (bad.returncode, bad.stdout) == (1, "")
    assert bad.stderr.startswith("twofa: error: methods ") and bad.stderr.count("\n") == 1


def test_console_script(redis_url: str) -> None:
    script = Path(sys.executable).with_name("twofa")
    if not script.exists():
        pytest.skip("the twofa console script is not installed (pip install -e .)")
    shown = _run([str(script)], "portal", "show", "acme", "--json", url=redis_url)
    assert json.loads(shown.stdout)["source"] == "none"
    usage = _run([str(script)], "portal", url=redis_url)
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1
