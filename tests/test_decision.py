"""The decision as a table: every reason and every boundary."""

from __future__ import annotations

from typing import Any

import pytest

from twofa_middleware.decision import (
    Decision,
    Identity,
    Reason,
    VerificationState,
    decide,
    needs_state,
)
from twofa_middleware.policy import Group, PortalPolicy

H = 3600.0
NOW = 1_900_000_000.0
ALWAYS = PortalPolicy(enforce=True, reauth_hours=24, ip_verification_hours=720)
IP_MODE = PortalPolicy(
    enforce=True, ip_change_only=True, reauth_hours=24, ip_verification_hours=720
)
WORKER = Identity("u1", Group.WORKER)
DEV = "device-digest"
IP = "203.0.113.7"


def st(device: float | None = None, ip: float | None = None, user: float | None = None) -> Any:
    return VerificationState(device_verified_at=device, ip_verified_at=ip, user_verified_at=user)


CASES = [
    # policy, identity, device, ip, state, expected
    pytest.param(
        PortalPolicy(),
        WORKER,
        None,
        IP,
        st(),
        False,
        Reason.NOT_ENFORCED,
        id="not-enforced-portal-passes",
    ),
    pytest.param(
        PortalPolicy(enforce=False, ip_change_only=True),
        WORKER,
        None,
        None,
        st(),
        False,
        Reason.NOT_ENFORCED,
        id="not-enforced-wins-over-ip-mode",
    ),
    pytest.param(
        PortalPolicy(enforce=True, groups=frozenset({Group.ADMINISTRATOR})),
        WORKER,
        None,
        IP,
        st(),
        False,
        Reason.GROUP_EXEMPT,
        id="group-outside-selection-passes",
    ),
    pytest.param(
        PortalPolicy(enforce=True, groups=frozenset({Group.ADMINISTRATOR})),
        Identity("u", None),
        None,
        IP,
        st(),
        False,
        Reason.GROUP_EXEMPT,
        id="user-without-group-is-exempt-when-groups-selected",
    ),
    pytest.param(
        PortalPolicy(enforce=True, groups=frozenset({Group.WORKER})),
        WORKER,
        None,
        IP,
        st(),
        True,
        Reason.NEW_DEVICE,
        id="group-inside-selection-is-challenged",
    ),
    pytest.param(
        ALWAYS,
        Identity("u", None),
        None,
        IP,
        st(),
        True,
        Reason.NEW_DEVICE,
        id="no-groups-selected-means-everyone",
    ),
    # always mode
    pytest.param(
        ALWAYS,
        WORKER,
        None,
        IP,
        st(device=NOW, ip=NOW, user=NOW),
        True,
        Reason.NEW_DEVICE,
        id="no-device-cookie-is-a-new-device",
    ),
    pytest.param(
        ALWAYS,
        WORKER,
        DEV,
        IP,
        st(ip=NOW, user=NOW),
        True,
        Reason.NEW_DEVICE,
        id="unknown-device-is-challenged",
    ),
    pytest.param(
        ALWAYS,
        WORKER,
        DEV,
        IP,
        st(device=NOW - 24 * H),
        True,
        Reason.REAUTH_DUE,
        id="device-exactly-at-reauth-expiry-is-challenged",
    ),
    pytest.param(
        ALWAYS,
        WORKER,
        DEV,
        IP,
        st(device=NOW - 24 * H + 1),
        False,
        Reason.DEVICE_TRUSTED,
        id="device-one-second-before-expiry-passes",
    ),
    pytest.param(
        ALWAYS,
        WORKER,
        DEV,
        IP,
        st(device=NOW - 30 * H),
        True,
        Reason.REAUTH_DUE,
        id="device-past-reauth-is-challenged",
    ),
    pytest.param(
        ALWAYS.replace(reauth_hours=None),
        WORKER,
        DEV,
        IP,
        st(device=NOW - 9999 * H),
        False,
        Reason.DEVICE_TRUSTED,
        id="null-reauth-never-expires",
    ),
    pytest.param(
        ALWAYS,
        WORKER,
        DEV,
        None,
        st(device=NOW),
        False,
        Reason.DEVICE_TRUSTED,
        id="always-mode-ignores-ip",
    ),
    # ip-change-only mode
    pytest.param(
        IP_MODE, WORKER, None, IP, st(user=NOW), True, Reason.NEW_IP, id="ip-never-verified-is-new"
    ),
    pytest.param(
        IP_MODE,
        WORKER,
        DEV,
        None,
        st(device=NOW, ip=NOW, user=NOW),
        True,
        Reason.NEW_IP,
        id="unknown-client-ip-never-matches",
    ),
    pytest.param(
        IP_MODE,
        WORKER,
        None,
        IP,
        st(ip=NOW - 720 * H, user=NOW),
        True,
        Reason.IP_EXPIRED,
        id="ip-exactly-at-verification-expiry-is-challenged",
    ),
    pytest.param(
        IP_MODE,
        WORKER,
        None,
        IP,
        st(ip=NOW - 720 * H + 1, user=NOW - 1),
        False,
        Reason.IP_TRUSTED,
        id="ip-one-second-before-expiry-passes",
    ),
    pytest.param(
        IP_MODE,
        WORKER,
        None,
        IP,
        st(ip=NOW - 1, user=NOW - 24 * H),
        True,
        Reason.REAUTH_DUE,
        id="ip-mode-reauth-exactly-at-expiry-is-challenged",
    ),
    pytest.param(
        IP_MODE,
        WORKER,
        None,
        IP,
        st(ip=NOW - 1, user=NOW - 24 * H + 1),
        False,
        Reason.IP_TRUSTED,
        id="ip-mode-reauth-one-second-before-passes",
    ),
    pytest.param(
        IP_MODE,
        WORKER,
        None,
        IP,
        st(ip=NOW - 1, user=None),
        True,
        Reason.REAUTH_DUE,
        id="ip-mode-missing-user-timestamp-is-reauth",
    ),
    pytest.param(
        IP_MODE.replace(reauth_hours=None),
        WORKER,
        None,
        IP,
        st(ip=NOW - 1),
        False,
        Reason.IP_TRUSTED,
        id="ip-mode-null-reauth-never-asks-again",
    ),
    pytest.param(
        IP_MODE.replace(ip_verification_hours=None),
        WORKER,
        None,
        IP,
        st(ip=NOW - 9999 * H, user=NOW),
        False,
        Reason.IP_TRUSTED,
        id="null-ip-verification-never-expires",
    ),
    pytest.param(
        IP_MODE,
        WORKER,
        None,
        IP,
        st(ip=NOW - 800 * H, user=NOW - 30 * H),
        True,
        Reason.IP_EXPIRED,
        id="ip-expiry-is-reported-before-reauth",
    ),
    pytest.param(
        IP_MODE,
        WORKER,
        None,
        IP,
        st(ip=NOW, user=NOW),
        False,
        Reason.IP_TRUSTED,
        id="new-browser-from-trusted-ip-passes",
    ),
]


@pytest.mark.parametrize(
    ("policy", "identity", "device", "ip", "state", "challenge", "reason"), CASES
)
def test_decision_table(
    policy: PortalPolicy,
    identity: Identity,
    device: str | None,
    ip: str | None,
    state: VerificationState,
    challenge: bool,
    reason: Reason,
) -> None:
    assert decide(policy, identity, device, ip, NOW, state) == Decision(challenge, reason)


def test_every_reason_is_reached_by_the_table() -> None:
    reached = {p.values[-1] for p in CASES}
    assert reached == set(Reason)


@pytest.mark.parametrize(
    ("policy", "identity", "expected"),
    [
        pytest.param(PortalPolicy(), WORKER, False, id="no-state-needed-when-not-enforced"),
        pytest.param(
            PortalPolicy(enforce=True, groups=frozenset({Group.CLIENT})),
            WORKER,
            False,
            id="no-state-needed-for-exempt-group",
        ),
        pytest.param(ALWAYS, WORKER, True, id="state-needed-when-enforced"),
    ],
)
def test_needs_state(policy: PortalPolicy, identity: Identity, expected: bool) -> None:
    assert needs_state(policy, identity) is expected
