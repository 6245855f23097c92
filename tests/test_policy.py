from __future__ import annotations

from typing import Any

import pytest

from twofa_middleware.errors import PolicyError
from twofa_middleware.policy import (
    DEFAULT_IP_VERIFICATION_HOURS,
    DEFAULT_REAUTH_HOURS,
    Group,
    Method,
    PortalPolicy,
)


def test_defaults_are_the_documented_ones() -> None:
    p = PortalPolicy.from_dict({})
    assert p.enforce is False
    assert p.methods == frozenset() and p.groups == frozenset()
    assert p.ip_change_only is False
    assert p.reauth_hours == DEFAULT_REAUTH_HOURS == 24
    assert p.ip_verification_hours == DEFAULT_IP_VERIFICATION_HOURS == 720


def test_none_selected_means_all() -> None:
    p = PortalPolicy.from_dict({"enforce": True, "methods": [], "groups": []})
    assert p.allowed_methods == {Method.EMAIL, Method.TOTP, Method.SMS}
    assert all(p.applies_to(g) for g in Group)


def test_selection_limits_methods_and_groups() -> None:
    p = PortalPolicy.from_dict({"methods": ["totp"], "groups": ["administrator"]})
    assert p.allowed_methods == {Method.TOTP}
    assert p.applies_to(Group.ADMINISTRATOR)
    assert not p.applies_to(Group.CLIENT)
    assert not p.applies_to(None)


def test_null_durations_mean_never() -> None:
    p = PortalPolicy.from_dict({"reauth_hours": None, "ip_verification_hours": None})
    assert p.reauth_seconds is None and p.ip_verification_seconds is None


def test_round_trip_through_json() -> None:
    p = PortalPolicy.from_dict(
        {
            "enforce": True,
            "methods": ["sms", "email"],
            "groups": ["worker"],
            "ip_change_only": True,
            "reauth_hours": 1.5,
            "ip_verification_hours": None,
        }
    )
    assert PortalPolicy.from_json(p.to_json()) == p
    assert p.to_dict()["methods"] == ["email", "sms"]


BAD: list[Any] = [
    pytest.param(
        {"reauth_hours": -3},
        "reauth_hours",
        "reauth_hours must be a positive number of hours or null, got -3",
        id="negative-reauth-is-refused",
    ),
    pytest.param(
        {"reauth_hours": 0},
        "reauth_hours",
        "reauth_hours must be a positive number of hours or null, got 0",
        id="zero-reauth-is-refused",
    ),
    pytest.param(
        {"ip_verification_hours": "24"},
        "ip_verification_hours",
        "ip_verification_hours must be a positive number of hours or null, got '24'",
        id="string-duration-is-refused",
    ),
    pytest.param(
        {"ip_verification_hours": True},
        "ip_verification_hours",
        "ip_verification_hours must be a positive number of hours or null, got True",
        id="boolean-duration-is-refused",
    ),
    pytest.param(
        {"reauth_hours": float("inf")},
        "reauth_hours",
        "reauth_hours must be a positive number of hours or null, got inf",
        id="infinite-duration-is-refused",
    ),
    pytest.param(
        {"enforce": "yes"},
        "enforce",
        "enforce must be true or false, got 'yes'",
        id="string-enforce-is-refused",
    ),
    pytest.param(
        {"ip_change_only": 1},
        "ip_change_only",
        "ip_change_only must be true or false, got 1",
        id="integer-flag-is-refused",
    ),
    pytest.param(
        {"methods": ["email", "fax"]},
        "methods",
        "methods contains 'fax'; allowed values are email, totp, sms (empty means all)",
        id="unknown-method-is-refused",
    ),
    pytest.param(
        {"methods": ["recovery"]},
        "methods",
        "methods contains 'recovery'; allowed values are email, totp, sms (empty means all)",
        id="recovery-is-not-a-policy-method",
    ),
    pytest.param(
        {"methods": "email"},
        "methods",
        "methods must be a list (an empty list means all), got 'email'",
        id="methods-as-string-is-refused",
    ),
    pytest.param(
        {"groups": ["admins"]},
        "groups",
        "groups contains 'admins'; allowed values are client, worker, administrator "
        "(empty means all)",
        id="unknown-group-is-refused",
    ),
    pytest.param(
        {"groups": None},
        "groups",
        "groups must be a list (an empty list means all), got None",
        id="null-groups-is-refused",
    ),
    pytest.param(
        {"enforce": True, "reauth": 12},
        "reauth",
        "unknown policy setting 'reauth'; allowed settings are enforce, methods, groups, "
        "ip_change_only, reauth_hours, ip_verification_hours",
        id="unknown-key-is-refused",
    ),
    pytest.param(
        ["enforce"],
        "policy",
        "a policy must be an object of settings, got list",
        id="non-object-is-refused",
    ),
]


@pytest.mark.parametrize(("data", "field", "message"), BAD)
def test_bad_input_is_refused_with_a_message_naming_the_field(
    data: Any, field: str, message: str
) -> None:
    with pytest.raises(PolicyError) as info:
        PortalPolicy.from_dict(data)
    assert info.value.field == field
    assert str(info.value) == message


def test_bad_json_is_refused() -> None:
    with pytest.raises(PolicyError, match="not valid JSON"):
        PortalPolicy.from_json("{enforce: true")


def test_constructor_validates_too() -> None:
    with pytest.raises(PolicyError, match="reauth_hours"):
        PortalPolicy(reauth_hours=-1)


def test_replace_validates() -> None:
    p = PortalPolicy(enforce=True)
    assert p.replace(ip_change_only=True).ip_change_only is True
    with pytest.raises(PolicyError, match="methods"):
        p.replace(methods=["pigeon"])
