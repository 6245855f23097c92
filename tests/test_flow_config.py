"""Configuration errors stop the start with a message naming the setting."""

from __future__ import annotations

from typing import Any

import pytest

from twofa_middleware.config import core_from_env
from twofa_middleware.errors import ConfigurationError
from twofa_middleware.flow import TwoFactor
from twofa_middleware.portals import single_portal
from twofa_middleware.settings.static import StaticSettings
from twofa_middleware.store.memory import MemoryStore

GOOD: dict[str, Any] = {
    "settings": StaticSettings({}),
    "store": MemoryStore(),
    "secret_key": "k" * 40,
    "portal_resolver": single_portal("acme"),
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"secret_key": "short"}, "TWOFA_SECRET_KEY", id="short-secret-is-refused"),
        pytest.param({"prefix": "_2fa"}, "prefix", id="relative-prefix-is-refused"),
        pytest.param({"prefix": "/_2fa/"}, "prefix", id="prefix-with-trailing-slash-is-refused"),
        pytest.param({"max_failures": 0}, "max_failures", id="zero-attempts-is-refused"),
        pytest.param({"max_failures": 101}, "max_failures", id="over-nist-ceiling-is-refused"),
        pytest.param({"totp_window": 3}, "totp_window", id="wide-totp-window-is-refused"),
        pytest.param(
            {"max_failures": 100, "failure_window": 60.0},
            "failure_window",
            id="over-100-failures-an-hour-is-refused",
        ),
        pytest.param({"failure_window": 0}, "failure_window", id="zero-window-is-refused"),
        pytest.param({"ip_max_failures": 0}, "ip_max_failures", id="zero-ip-budget-is-refused"),
        pytest.param({"send_cooldown": 0}, "send_cooldown", id="no-resend-cooldown-is-refused"),
        pytest.param(
            {"max_sends_per_hour": 0}, "max_sends_per_hour", id="no-sends-at-all-is-refused"
        ),
        pytest.param(
            {"ip_max_sends_per_hour": 0}, "ip_max_sends_per_hour", id="no-sends-per-ip-is-refused"
        ),
        pytest.param({"code_digits": 4}, "code_digits", id="four-digit-codes-are-refused"),
        pytest.param({"code_ttl": 601}, "code_ttl", id="codes-over-ten-minutes-are-refused"),
        pytest.param(
            {"portal_names": {"acme": "Acme\r\nBcc: x"}},
            "portal_names",
            id="portal-name-with-line-break-is-refused",
        ),
        pytest.param(
            {"admin_page": True}, "admin_page", id="admin-page-without-writable-settings-is-refused"
        ),
    ],
)
def test_bad_configuration_is_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        TwoFactor(**(GOOD | change))


def test_good_configuration_builds() -> None:
    core = TwoFactor(**GOOD)
    assert core.prefix == "/_2fa"


@pytest.mark.parametrize(
    ("env", "console_codes", "methods"),
    [
        pytest.param({}, False, {"totp", "recovery"}, id="no-delivery-configured-offers-no-codes"),
        pytest.param({}, True, {"email", "sms", "totp", "recovery"}, id="development-prints-codes"),
        pytest.param(
            {
                "TWOFA_SMTP_HOST": "localhost",
                "TWOFA_SMTP_FROM": "2fa@example.test",
                "TWOFA_SMS_WEBHOOK_URL": "http://localhost:9/sms",
            },
            False,
            {"email", "sms", "totp", "recovery"},
            id="configured-delivery-offers-codes",
        ),
    ],
)
def test_codes_are_printed_on_the_console_only_when_asked_for_development(
    env: dict[str, str],
    console_codes: bool,
    methods: set[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A production deployment that forgot TWOFA_SMTP_HOST must not log codes."""
    base = {"TWOFA_SECRET_KEY": "k" * 40, "TWOFA_PORTALS": "{}"}
    core = core_from_env(base | env, allow_memory_store=True, console_codes=console_codes)
    assert set(core.methods) == methods
    consoles = [s for s in core.senders.values() if "Console" in type(s.sender).__name__]
    assert bool(consoles) == console_codes
    if not console_codes and not env:
        assert "email codes are off: TWOFA_SMTP_HOST is not set" in caplog.text
