"""The decision: does this request need a second factor now?

This module is the charter of the product's behaviour: every pass/challenge
verdict is made here and nowhere else. It does no I/O and never reads the clock;
the caller supplies ``now`` and the stored timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .policy import Group, PortalPolicy


class Reason(StrEnum):
    NOT_ENFORCED = "not_enforced"
    GROUP_EXEMPT = "group_exempt"
    NEW_IP = "new_ip"
    IP_EXPIRED = "ip_expired"
    REAUTH_DUE = "reauth_due"
    IP_TRUSTED = "ip_trusted"
    NEW_DEVICE = "new_device"
    DEVICE_TRUSTED = "device_trusted"


@dataclass(frozen=True, slots=True)
class Identity:
    """The user the host app authenticated (never taken from request parameters)."""

    id: str
    group: Group | None = None
    email: str | None = None
    phone: str | None = None
    # The portal the user belongs to, when the identity knows it; it must match
    # the portal the request resolved to.
    portal: str | None = None


@dataclass(frozen=True, slots=True)
class VerificationState:
    """What the store knows about one user, one device and one IP (epoch seconds)."""

    device_verified_at: float | None = None
    ip_verified_at: float | None = None
    user_verified_at: float | None = None


EMPTY_STATE = VerificationState()


@dataclass(frozen=True, slots=True)
class Decision:
    challenge: bool
    reason: Reason

    @property
    def passed(self) -> bool:
        return not self.challenge


_PASS = {r: Decision(False, r) for r in Reason}
_CHALLENGE = {r: Decision(True, r) for r in Reason}


def needs_state(policy: PortalPolicy, identity: Identity) -> bool:
    """Whether ``decide`` will look at stored state (so the caller may skip the read)."""
    return policy.enforce and policy.applies_to(identity.group)


def decide(
    policy: PortalPolicy,
    identity: Identity,
    device: str | None,
    ip: str | None,
    now: float,
    state: VerificationState,
) -> Decision:
    """Pass or challenge, with the reason, exactly as DESIGN.md's table says.

    ``device`` is the id from a valid device cookie (None when absent or forged),
    ``ip`` the canonical client-IP key (None when unknown). A timestamp counts as
    expired when ``now - verified_at >= duration``: at exactly the boundary the
    user is asked again.
    """
    if not policy.enforce:
        return _PASS[Reason.NOT_ENFORCED]
    if not policy.applies_to(identity.group):
        return _PASS[Reason.GROUP_EXEMPT]
    reauth = policy.reauth_seconds
    if policy.ip_change_only:
        ip_at = state.ip_verified_at if ip is not None else None
        if ip_at is None:
            return _CHALLENGE[Reason.NEW_IP]
        if _expired(ip_at, policy.ip_verification_seconds, now):
            return _CHALLENGE[Reason.IP_EXPIRED]
        if _expired(state.user_verified_at, reauth, now):
            return _CHALLENGE[Reason.REAUTH_DUE]
        return _PASS[Reason.IP_TRUSTED]
    device_at = state.device_verified_at if device is not None else None
    if device_at is None:
        return _CHALLENGE[Reason.NEW_DEVICE]
    if _expired(device_at, reauth, now):
        return _CHALLENGE[Reason.REAUTH_DUE]
    return _PASS[Reason.DEVICE_TRUSTED]


def _expired(verified_at: float | None, duration: float | None, now: float) -> bool:
    if duration is None:
        # Never expires; a missing timestamp in IP mode means the user record is
        # gone, which only happens when no duration could still use it.
        return False
    if verified_at is None:
        return True
    return now - verified_at >= duration
