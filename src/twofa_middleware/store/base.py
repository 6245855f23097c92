"""The verification-state store: one protocol, a Redis and an in-memory backend.

Every key of one user lives under the hash tag ``{portal:user}`` (see
``keys.user_tag``) so Redis Cluster serves them from one slot and multi-key
operations stay atomic. Everything secret arrives here already hashed or
encrypted: the store never sees a code, a seed or a device token in clear.
Driver failures surface as ``StoreError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..decision import VerificationState


@dataclass(frozen=True, slots=True)
class StoredCode:
    """A one-time code as stored: its keyed hash and when it was issued."""

    digest: bytes
    issued_at: float


@dataclass(frozen=True, slots=True)
class TotpRecord:
    """An authenticator enrollment: the encrypted seed, and whether it is confirmed."""

    sealed_seed: bytes
    confirmed: bool


@dataclass(frozen=True, slots=True)
class CounterState:
    count: int
    # Seconds until the counter resets (0 when it does not exist).
    resets_in: float


@dataclass(frozen=True, slots=True)
class UserTrust:
    """Everything trusted for one user, for the admin tools (digests, not tokens)."""

    user_verified_at: float | None
    devices: dict[str, float]
    ips: dict[str, float]


class StateStore(Protocol):
    """Verification state, secrets and counters, per portal and user.

    ``device`` is a digest of the device token, ``ip`` the canonical IP key.
    """

    # --- the request path -------------------------------------------------
    async def read_state(
        self, portal: str, user: str, device: str | None, ip: str | None
    ) -> VerificationState:
        """What the decision needs, in ONE round trip."""
        ...

    async def record_verification(
        self,
        portal: str,
        user: str,
        device: str | None,
        ip: str | None,
        now: float,
        retention_seconds: float,
        *,
        replaces: str | None = None,
    ) -> None:
        """Mark device, IP and user verified at ``now``; keep them ``retention_seconds``.

        ``replaces`` is the device this browser held until now: its record goes in
        the same step (device tokens rotate at every verification, so an old copy
        of a device cookie never gains trust again). The IP list and the device
        list per user are bounded: the oldest entries are dropped first.
        """
        ...

    async def user_trust(self, portal: str, user: str) -> UserTrust: ...

    async def revoke_trust(self, portal: str, user: str) -> None:
        """Forget every verified device, IP and timestamp of the user."""
        ...

    # --- secrets ----------------------------------------------------------
    async def get_totp(self, portal: str, user: str) -> TotpRecord | None: ...

    async def set_totp(self, portal: str, user: str, record: TotpRecord) -> None: ...

    async def delete_totp(self, portal: str, user: str) -> None: ...

    async def use_totp_step(self, portal: str, user: str, step: int) -> bool:
        """Atomically accept ``step`` only if it is later than every step used before."""
        ...

    async def put_code(
        self, portal: str, user: str, purpose: str, code: StoredCode, ttl_seconds: float
    ) -> None:
        """Store a one-time code, replacing any earlier one for the same purpose."""
        ...

    async def get_code(self, portal: str, user: str, purpose: str) -> StoredCode | None: ...

    async def consume_code(self, portal: str, user: str, purpose: str, digest: bytes) -> bool:
        """Atomically delete the code if its digest is ``digest``; True for one caller only."""
        ...

    async def set_recovery_codes(self, portal: str, user: str, digests: Sequence[bytes]) -> None:
        """Replace the user's recovery codes."""
        ...

    async def consume_recovery_code(self, portal: str, user: str, digest: bytes) -> bool:
        """Atomically remove one recovery code; True for one caller only."""
        ...

    async def count_recovery_codes(self, portal: str, user: str) -> int: ...

    async def delete_user(self, portal: str, user: str) -> None:
        """Remove all factors, trust and counters of the user (helpdesk reset)."""
        ...

    # --- counters and markers (tag: keys.user_tag or keys.ip_tag) ---------
    async def hit(self, tag: str, name: str, window_seconds: float) -> CounterState:
        """Atomically increment a counter that resets ``window_seconds`` after its first hit."""
        ...

    async def peek(self, tag: str, name: str) -> CounterState: ...

    async def reset(self, tag: str, name: str) -> None: ...

    async def claim(self, tag: str, name: str, ttl_seconds: float) -> float:
        """Set a single-use marker. 0.0 when this caller set it; else seconds it has left."""
        ...

    # --- lifecycle --------------------------------------------------------
    async def ping(self) -> None:
        """Raise ``StoreError`` if the backend is unreachable."""
        ...

    async def close(self) -> None: ...
