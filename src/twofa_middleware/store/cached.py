"""A coherent in-process near-cache of verification state, in front of a ``RedisStore``.

The gate reads the same few facts (when this user, device and IP were last
verified) on every request. ``CachedStore`` answers them from process memory
once Redis has answered them, and delegates everything else untouched.

Why a cached answer can never extend trust beyond what Redis holds:

- The answer is the timestamps Redis returned, not a verdict: the decision still
  compares them with the current time and the current policy on every request,
  so expiry by age and policy changes apply exactly as without the cache.
- Trust only disappears from Redis in three ways, and each is covered:
  1. ``record_verification`` (which may drop the oldest devices and IPs),
     ``revoke_trust`` and ``delete_user`` publish the user's tag on
     ``keys.TRUST_CHANNEL`` in the same atomic step as the write (``RedisStore``
     does it, whoever calls it); every process drops that user's entries when
     the message arrives, this one at once.
  2. The trust hash expiring: every record keeps it at least ``min_retention``
     after its last verification (the flow passes the policy's durations plus a
     day), so an entry is used only while ``now < u + min_retention - clock_skew``
     (``u``: the user's last verification, which the hash always holds). Past
     that, reads go to Redis again.
  3. Redis losing data (restart, failover): that drops the subscription, which
     flushes the cache.
- Messages can be lost while the subscription is down, so the cache is used only
  while the ``Invalidator`` proves the subscription up within its lease (1 s by
  default): every change is obeyed by every process within that time, and a
  silent network failure stops the cache (and so fails closed) within it too.
- A read that was in flight while any invalidation happened is not cached (the
  generation counter), so a revocation cannot be overwritten by an older answer.
- Only answers that hold some trust are cached: "never verified" is always read
  from Redis, so a user who just verified in another process is never challenged
  again from a stale entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

from .. import keys
from ..decision import VerificationState
from ..errors import ConfigurationError
from ..invalidation import Invalidator
from .base import CounterState, StoredCode, TotpRecord, UserTrust
from .redis import RedisStore

__all__ = ["CachedStore"]

DAY: Final = 86400.0
FLUSH_ALL: Final = "*"

_UserKey = tuple[str, str]
_EntryKey = tuple[str | None, str | None]


class CachedStore:
    """``StateStore`` over a ``RedisStore`` with a coherent near-cache of ``read_state``.

    - ``max_users``: users kept (the oldest inserted goes first);
      ``max_entries_per_user``: (device, IP) pairs kept per user (all dropped when
      full). About 650 bytes per user with one pair: 13 MB for 20,000 users.
    - ``min_retention``: the shortest ``retention_seconds`` any writer passes to
      ``record_verification`` (the flow never passes less than a day; a smaller
      one through this store is refused). ``clock_skew``: how far the clocks of
      the processes sharing Redis may disagree.
    - ``lease``: how stale the proof that the subscription is up may be.
    - ``clock``: the wall clock the stored timestamps come from (the core's).
    """

    def __init__(
        self,
        store: RedisStore,
        *,
        max_users: int = 20_000,
        max_entries_per_user: int = 4,
        min_retention: float = DAY,
        clock_skew: float = 3600.0,
        lease: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_users < 1 or max_entries_per_user < 1:
            raise ConfigurationError("max_users and max_entries_per_user must be >= 1")
        if not 0 <= clock_skew < min_retention:
            raise ConfigurationError(
                f"clock_skew must be >= 0 and below min_retention, got {clock_skew!r}"
            )
        self._store = store
        self._max_users = max_users
        self._max_entries = max_entries_per_user
        self._min_retention = min_retention
        self._usable_for = min_retention - clock_skew
        self._clock = clock
        # (portal, user) -> (device, ip) -> what Redis answered
        self._users: dict[_UserKey, dict[_EntryKey, VerificationState]] = {}
        # Bumped on every invalidation; a read that saw it change is not cached.
        self._generation = 0
        self._invalidator = Invalidator(
            store.client,
            [keys.TRUST_CHANNEL],
            on_message=self._on_message,
            on_reset=self._flush,
            lease=lease,
            name="twofa-trust-invalidation",
        )
        self.hits = 0
        self.misses = 0
        self.invalidations = 0
        """Messages, local writes and flushes handled so far; for tests and metrics."""

    @property
    def caching_active(self) -> bool:
        """True only while the invalidation subscription is proven up."""
        return self._invalidator.active

    @property
    def invalidator(self) -> Invalidator:
        return self._invalidator

    def __len__(self) -> int:
        """Cached (user, device, IP) entries."""
        return sum(len(entries) for entries in self._users.values())

    # --- the request path -------------------------------------------------
    async def read_state(
        self, portal: str, user: str, device: str | None, ip: str | None
    ) -> VerificationState:
        if self._invalidator.active:
            entries = self._users.get((portal, user))
            if entries is not None:
                state = entries.get((device, ip))
                if state is not None:
                    at = state.user_verified_at
                    if at is not None and self._clock() < at + self._usable_for:
                        self.hits += 1
                        return state
        self.misses += 1
        generation = self._generation
        state = await self._store.read_state(portal, user, device, ip)
        if generation == self._generation and self._keep(state):
            entries = self._users.get((portal, user))
            if entries is None:
                if len(self._users) >= self._max_users:
                    del self._users[next(iter(self._users))]
                entries = self._users[(portal, user)] = {}
            elif len(entries) >= self._max_entries:
                entries.clear()
            entries[(device, ip)] = state
        return state

    def _keep(self, state: VerificationState) -> bool:
        at = state.user_verified_at
        return at is not None and self._invalidator.active and self._clock() < at + self._usable_for

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
        if retention_seconds < self._min_retention:
            raise ConfigurationError(
                f"retention_seconds {retention_seconds!r} is below the near-cache's "
                f"min_retention {self._min_retention!r}"
            )
        try:
            await self._store.record_verification(
                portal, user, device, ip, now, retention_seconds, replaces=replaces
            )
        finally:
            # Read-your-writes here; the other processes hear it on the channel.
            self._forget(portal, user)

    async def user_trust(self, portal: str, user: str) -> UserTrust:
        return await self._store.user_trust(portal, user)

    async def revoke_trust(self, portal: str, user: str) -> None:
        try:
            await self._store.revoke_trust(portal, user)
        finally:
            self._forget(portal, user)

    # --- secrets (not cached) ----------------------------------------------
    async def get_totp(self, portal: str, user: str) -> TotpRecord | None:
        return await self._store.get_totp(portal, user)

    async def set_totp(self, portal: str, user: str, record: TotpRecord) -> None:
        await self._store.set_totp(portal, user, record)

    async def delete_totp(self, portal: str, user: str) -> None:
        await self._store.delete_totp(portal, user)

    async def use_totp_step(self, portal: str, user: str, step: int) -> bool:
        return await self._store.use_totp_step(portal, user, step)

    async def put_code(
        self, portal: str, user: str, purpose: str, code: StoredCode, ttl_seconds: float
    ) -> None:
        await self._store.put_code(portal, user, purpose, code, ttl_seconds)

    async def get_code(self, portal: str, user: str, purpose: str) -> StoredCode | None:
        return await self._store.get_code(portal, user, purpose)

    async def consume_code(self, portal: str, user: str, purpose: str, digest: bytes) -> bool:
        return await self._store.consume_code(portal, user, purpose, digest)

    async def set_recovery_codes(self, portal: str, user: str, digests: Sequence[bytes]) -> None:
        await self._store.set_recovery_codes(portal, user, digests)

    async def consume_recovery_code(self, portal: str, user: str, digest: bytes) -> bool:
        return await self._store.consume_recovery_code(portal, user, digest)

    async def count_recovery_codes(self, portal: str, user: str) -> int:
        return await self._store.count_recovery_codes(portal, user)

    async def delete_user(self, portal: str, user: str) -> None:
        try:
            await self._store.delete_user(portal, user)
        finally:
            self._forget(portal, user)

    # --- counters and markers (not cached) ---------------------------------
    async def hit(self, tag: str, name: str, window_seconds: float) -> CounterState:
        return await self._store.hit(tag, name, window_seconds)

    async def peek(self, tag: str, name: str) -> CounterState:
        return await self._store.peek(tag, name)

    async def reset(self, tag: str, name: str) -> None:
        await self._store.reset(tag, name)

    async def claim(self, tag: str, name: str, ttl_seconds: float) -> float:
        return await self._store.claim(tag, name, ttl_seconds)

    # --- lifecycle --------------------------------------------------------
    async def ping(self) -> None:
        await self._store.ping()

    async def start(self) -> None:
        """Subscribe to invalidations; until that is confirmed nothing is cached."""
        start_store = getattr(self._store, "start", None)  # optional, as for the core
        if start_store is not None:
            await start_store()
        await self._invalidator.start()

    async def close(self) -> None:
        await self._invalidator.close()
        await self._store.close()

    # --- invalidation -----------------------------------------------------
    def _forget(self, portal: str, user: str) -> None:
        self._generation += 1
        self.invalidations += 1
        self._users.pop((portal, user), None)

    def _flush(self) -> None:
        self._generation += 1
        self.invalidations += 1
        self._users.clear()

    def _on_message(self, data: str) -> None:
        who = None if data == FLUSH_ALL else keys.parse_user_tag(data)
        if who is None:
            # "*", or a message we cannot read: forget everyone rather than guess.
            self._flush()
        else:
            self._forget(*who)
