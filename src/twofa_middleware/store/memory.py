"""The in-memory backend for the single-process demo and for tests.

Same semantics as ``RedisStore``, expiries included, measured on an injectable
clock. No method awaits, so each runs to completion without interleaving and is
atomic within one event loop (it is not meant to be shared between threads or
processes). Entries are keyed by the same tags as Redis keys (``keys.user_tag``,
or the tag the caller passes), so ``delete_user`` simply drops the user's tag.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .. import keys
from ..decision import VerificationState
from ..errors import ConfigurationError
from .base import CounterState, StoredCode, TotpRecord, UserTrust

__all__ = ["MemoryStore"]

_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(slots=True)
class _Trust:
    user_at: float | None = None
    devices: dict[str, float] = field(default_factory=dict)
    ips: dict[str, float] = field(default_factory=dict)


def _bound(entries: dict[str, float], limit: int, keep: str | None) -> None:
    """Drop the oldest entries beyond ``limit``, never ``keep`` (the one just written)."""
    others = sorted((at, name) for name, at in entries.items() if name != keep)
    excess = len(entries) - limit
    for _, name in others[: max(excess, 0)]:
        del entries[name]


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {seconds!r}")
    return seconds


class MemoryStore:
    """``StateStore`` in a dict, for one process."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        max_ips_per_user: int = 20,
        max_devices_per_user: int = 20,
    ) -> None:
        if max_ips_per_user < 1 or max_devices_per_user < 1:
            raise ConfigurationError("max_ips_per_user and max_devices_per_user must be >= 1")
        self._clock = clock
        self._max_ips = max_ips_per_user
        self._max_devices = max_devices_per_user
        # Expiring entries: key -> (value, expires_at on the clock). The user's
        # tag is (the first part of) every key.
        self._trust: dict[str, tuple[_Trust, float]] = {}
        self._codes: dict[tuple[str, str], tuple[StoredCode, float]] = {}  # (tag, purpose)
        self._counters: dict[tuple[str, str], tuple[int, float]] = {}  # (tag, name)
        self._claims: dict[tuple[str, str], tuple[None, float]] = {}  # (tag, name)
        # Entries that do not expire.
        self._totp: dict[str, TotpRecord] = {}
        self._totp_steps: dict[str, int] = {}
        self._recovery: dict[str, set[bytes]] = {}

    def _get(self, table: dict[_K, tuple[_V, float]], key: _K) -> tuple[_V, float] | None:
        """The live entry, or None; an expired entry is removed on the way."""
        entry = table.get(key)
        if entry is not None and self._clock() >= entry[1]:
            del table[key]
            return None
        return entry

    # --- the request path -------------------------------------------------
    async def read_state(
        self, portal: str, user: str, device: str | None, ip: str | None
    ) -> VerificationState:
        entry = self._get(self._trust, keys.user_tag(portal, user))
        if entry is None:
            return VerificationState()
        trust = entry[0]
        return VerificationState(
            device_verified_at=None if device is None else trust.devices.get(device),
            ip_verified_at=None if ip is None else trust.ips.get(ip),
            user_verified_at=trust.user_at,
        )

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
        expires_at = self._clock() + _positive(retention_seconds)
        key = keys.user_tag(portal, user)
        entry = self._get(self._trust, key)
        trust = _Trust() if entry is None else entry[0]
        trust.user_at = now
        if replaces is not None and replaces != device:
            trust.devices.pop(replaces, None)
        if device is not None:
            trust.devices[device] = now
        if ip is not None:
            trust.ips[ip] = now
        _bound(trust.ips, self._max_ips, ip)
        _bound(trust.devices, self._max_devices, device)
        self._trust[key] = (trust, expires_at)

    async def user_trust(self, portal: str, user: str) -> UserTrust:
        entry = self._get(self._trust, keys.user_tag(portal, user))
        trust = _Trust() if entry is None else entry[0]
        return UserTrust(
            user_verified_at=trust.user_at, devices=dict(trust.devices), ips=dict(trust.ips)
        )

    async def revoke_trust(self, portal: str, user: str) -> None:
        self._trust.pop(keys.user_tag(portal, user), None)

    # --- secrets ----------------------------------------------------------
    async def get_totp(self, portal: str, user: str) -> TotpRecord | None:
        return self._totp.get(keys.user_tag(portal, user))

    async def set_totp(self, portal: str, user: str, record: TotpRecord) -> None:
        # The last used step is kept (see RedisStore.set_totp).
        self._totp[keys.user_tag(portal, user)] = record

    async def delete_totp(self, portal: str, user: str) -> None:
        tag = keys.user_tag(portal, user)
        self._totp.pop(tag, None)
        self._totp_steps.pop(tag, None)

    async def use_totp_step(self, portal: str, user: str, step: int) -> bool:
        tag = keys.user_tag(portal, user)
        last = self._totp_steps.get(tag)
        if last is not None and step <= last:
            return False
        self._totp_steps[tag] = step
        return True

    async def put_code(
        self, portal: str, user: str, purpose: str, code: StoredCode, ttl_seconds: float
    ) -> None:
        key = (keys.user_tag(portal, user), purpose)
        self._codes[key] = (code, self._clock() + _positive(ttl_seconds))

    async def get_code(self, portal: str, user: str, purpose: str) -> StoredCode | None:
        entry = self._get(self._codes, (keys.user_tag(portal, user), purpose))
        return None if entry is None else entry[0]

    async def consume_code(self, portal: str, user: str, purpose: str, digest: bytes) -> bool:
        key = (keys.user_tag(portal, user), purpose)
        entry = self._get(self._codes, key)
        # Plain equality like the Redis script: the digest is a keyed hash.
        if entry is None or entry[0].digest != digest:
            return False
        del self._codes[key]
        return True

    async def set_recovery_codes(self, portal: str, user: str, digests: Sequence[bytes]) -> None:
        self._recovery[keys.user_tag(portal, user)] = set(digests)

    async def consume_recovery_code(self, portal: str, user: str, digest: bytes) -> bool:
        codes = self._recovery.get(keys.user_tag(portal, user), set())
        if digest not in codes:
            return False
        codes.remove(digest)
        return True

    async def count_recovery_codes(self, portal: str, user: str) -> int:
        return len(self._recovery.get(keys.user_tag(portal, user), ()))

    async def delete_user(self, portal: str, user: str) -> None:
        tag = keys.user_tag(portal, user)
        tagged: tuple[dict[tuple[str, str], Any], ...] = (self._codes, self._counters, self._claims)
        for table in tagged:
            for key in [key for key in table if key[0] == tag]:
                del table[key]
        self._trust.pop(tag, None)
        self._totp.pop(tag, None)
        self._totp_steps.pop(tag, None)
        self._recovery.pop(tag, None)

    # --- counters and markers ---------------------------------------------
    async def hit(self, tag: str, name: str, window_seconds: float) -> CounterState:
        window = _positive(window_seconds)
        # A new counter's window starts at this hit; later hits do not extend it.
        count, expires_at = self._get(self._counters, (tag, name)) or (0, self._clock() + window)
        self._counters[(tag, name)] = (count + 1, expires_at)
        return CounterState(count=count + 1, resets_in=expires_at - self._clock())

    async def peek(self, tag: str, name: str) -> CounterState:
        entry = self._get(self._counters, (tag, name))
        if entry is None:
            return CounterState(count=0, resets_in=0.0)
        return CounterState(count=entry[0], resets_in=entry[1] - self._clock())

    async def reset(self, tag: str, name: str) -> None:
        self._counters.pop((tag, name), None)

    async def claim(self, tag: str, name: str, ttl_seconds: float) -> float:
        entry = self._get(self._claims, (tag, name))
        if entry is not None:
            return entry[1] - self._clock()
        self._claims[(tag, name)] = (None, self._clock() + _positive(ttl_seconds))
        return 0.0

    # --- lifecycle --------------------------------------------------------
    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
