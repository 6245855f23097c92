"""Configuration errors stop the start with a message naming the setting."""

from __future__ import annotations

from typing import Any

import pytest

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
