"""Where portal policies come from: one small async protocol."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..decision import VerificationState
from ..policy import PortalPolicy


class SettingsProvider(Protocol):
    async def get_policy(self, portal: str) -> PortalPolicy:
        """The portal's policy; a portal with no policy gets ``default`` or NOT_ENFORCED."""
        ...

    async def start(self) -> None:
        """Connect and validate; called when the app starts."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class RevocationSource(Protocol):
    """A provider that can also revoke a whole portal's trust (``RedisSettings``).

    Optional: the flow checks for it once, so static providers and custom ones
    written against ``SettingsProvider`` keep working unchanged.
    """

    async def get_revoked_before(self, portal: str) -> float | None:
        """Epoch seconds: verifications at or before it no longer count; None = none."""
        ...


def drop_revoked(state: VerificationState, revoked_before: float | None) -> VerificationState:
    """``state`` with every timestamp at or before ``revoked_before`` treated as missing.

    Pure, like the decision it feeds: a revoked verification reads exactly as one
    that never happened (``new_device`` / ``new_ip``).
    """
    if revoked_before is None:
        return state

    def keep(at: float | None) -> float | None:
        return at if at is not None and at > revoked_before else None

    return VerificationState(
        device_verified_at=keep(state.device_verified_at),
        ip_verified_at=keep(state.ip_verified_at),
        user_verified_at=keep(state.user_verified_at),
    )
