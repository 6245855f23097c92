"""Admin-writable policies in Redis, cached per process and invalidated by pub/sub.

Storage: one hash, ``keys.POLICIES_KEY``, field = portal id, value = policy JSON;
and one hash, ``keys.REVOCATIONS_KEY``, field = portal id, value = the epoch
seconds before which the portal's stored verifications no longer count (the
admin's "everyone verifies again"). Both are read together, in one round trip,
and cached together. Every write publishes the portal id on
``keys.POLICIES_CHANNEL`` in the same MULTI as the write, so no worker can see
the change without the message following.

The cache is only trusted while the subscription is known to be up. Pub/sub is
fire-and-forget: a message published while our connection is down is lost for
good, so a cache kept across a drop could serve a stale policy forever. Hence:
caching is off until SUBSCRIBE is confirmed, the cache is flushed on every drop
or reconnect and again on every confirmation, and a read only fills the cache if
no invalidation happened while it was in flight (the generation counter).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .. import audit, keys
from ..errors import ConfigurationError, PolicyError, StoreError
from ..policy import NOT_ENFORCED, PortalPolicy
from .static import DEFAULT_PORTAL, check_portal_id, parse_policy, parse_portals, resolve

logger = logging.getLogger(__name__)

# Message meaning "forget every cached policy" (bulk imports, manual repairs).
FLUSH_ALL: Final = "*"

_BACKOFF_MIN: Final = 0.1
_BACKOFF_MAX: Final = 1.0
# An idle subscription is PINGed this often; no reply within the next interval
# means a half-open connection (peer vanished without a FIN), treated as a drop.
_IDLE_PING_SECONDS: Final = 5.0
# start() waits this long for the first SUBSCRIBE confirmation; after that it
# returns anyway (reads then go to Redis until the subscription comes up).
_START_WAIT_SECONDS: Final = 2.0

_REDIS_ERRORS: Final = (RedisError, OSError)

_R = TypeVar("_R")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class RedisSettings:
    """A ``SettingsProvider`` over a Redis hash, with an invalidated in-process cache."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        cache_ttl: float | None = None,
        fallback: Mapping[str, PortalPolicy | Mapping[str, Any]] | None = None,
    ) -> None:
        """``fallback``: policies (with an optional ``default``) for portals that Redis
        holds no policy for, so a Redis that lost its data (restart without
        persistence, FLUSHALL) cannot silently switch 2FA off."""
        if cache_ttl is not None and not (math.isfinite(cache_ttl) and cache_ttl > 0):
            raise ConfigurationError(
                f"cache_ttl must be a positive number of seconds or None, got {cache_ttl!r}"
            )
        self._client = client
        self._fallback = parse_portals(fallback or {})
        self._owns_client = False
        self._cache_ttl = cache_ttl
        # portal -> (policy, revoked_before, expires at [monotonic])
        self._cache: dict[str, tuple[PortalPolicy, float | None, float]] = {}
        # Bumped on every invalidation/flush; a read that saw it change must not cache.
        self._generation = 0
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.invalidations = 0
        """How many invalidations (messages, local writes, flushes) happened; for tests."""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cache_ttl: float | None = None,
        fallback: Mapping[str, PortalPolicy | Mapping[str, Any]] | None = None,
        **options: Any,
    ) -> RedisSettings:
        """Settings over a client of their own (closed by ``close``).

        ``options`` go to ``redis.asyncio.Redis.from_url``. Unless given, ``retry``
        is a short one: after a Redis restart every pooled connection is dead and
        the first command on each would fail without it, while a Redis that is
        really down still fails (closed) within about a second.
        """
        options.setdefault("retry", Retry(ExponentialWithJitterBackoff(cap=0.25, base=0.02), 3))
        settings = cls(
            aioredis.Redis.from_url(url, **options), cache_ttl=cache_ttl, fallback=fallback
        )
        settings._owns_client = True
        return settings

    @property
    def caching_active(self) -> bool:
        """True only while the invalidation subscription is confirmed up."""
        return self._subscribed.is_set()

    # -- SettingsProvider ------------------------------------------------------------

    async def get_policy(self, portal: str) -> PortalPolicy:
        return (await self._entry(portal))[0]

    async def get_revoked_before(self, portal: str) -> float | None:
        """When the portal's trust was last revoked (``RevocationSource``); cached likewise."""
        return (await self._entry(portal))[1]

    async def _entry(self, portal: str) -> tuple[PortalPolicy, float | None]:
        if self.caching_active:
            entry = self._cache.get(portal)
            if entry is not None and entry[2] > time.monotonic():
                return entry[0], entry[1]  # only checked portal ids are ever cached
        check_portal_id(portal)
        generation = self._generation
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hmget(keys.POLICIES_KEY, [portal, DEFAULT_PORTAL])
                pipe.hget(keys.REVOCATIONS_KEY, portal)
                (own, default), revoked = await pipe.execute()
        except _REDIS_ERRORS as exc:
            raise StoreError(f"cannot read the 2FA policy of portal {portal!r}: {exc}") from exc
        if own is not None:
            policy = _stored(portal, own)
        elif default is not None:
            policy = _stored(DEFAULT_PORTAL, default)
        else:
            policy = resolve(self._fallback, portal)
        revoked_before = _revocation(portal, revoked)
        if self.caching_active and generation == self._generation:
            ttl = math.inf if self._cache_ttl is None else self._cache_ttl
            self._cache[portal] = (policy, revoked_before, time.monotonic() + ttl)
        return policy, revoked_before

    async def start(self) -> None:
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._listen(), name="twofa-policy-invalidation")
        try:
            await asyncio.wait_for(self._subscribed.wait(), _START_WAIT_SECONDS)
        except TimeoutError:
            # Not fatal: reads go to Redis uncached until the subscription is up.
            logger.warning("policy invalidation subscription not up yet; caching disabled")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._owns_client:
            await self._client.aclose()

    # -- administration --------------------------------------------------------------

    async def set_policy(
        self,
        portal: str,
        policy: PortalPolicy | Mapping[str, Any],
        *,
        actor: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Store the portal's policy (validated first); ``actor`` goes to the audit log."""
        new = parse_policy(check_portal_id(portal), policy)
        text = new.to_json()

        def command(pipe: Pipeline) -> None:
            pipe.hget(keys.POLICIES_KEY, portal)
            pipe.hset(keys.POLICIES_KEY, portal, text)

        results = await self._write(portal, "set", command)
        _audit_change("policy_set", portal, actor, reason, _readable(results[0]), new)

    async def update_policy(
        self,
        portal: str,
        change: Callable[[PortalPolicy], PortalPolicy],
        *,
        actor: str | None = None,
        reason: str | None = None,
    ) -> tuple[PortalPolicy | None, PortalPolicy]:
        """Read-modify-write the portal's own policy, safe against concurrent admins.

        ``change`` gets the policy the portal has now (its own, else ``default``,
        else not enforced) and returns the new one, which becomes the portal's own.
        It may run more than once (a concurrent write restarts it); a
        ``PolicyError`` it raises aborts the update. Returns (own policy before,
        or None when it had none; policy after).
        """
        check_portal_id(portal)

        async def attempt(pipe: Pipeline) -> tuple[PortalPolicy | None, PortalPolicy]:
            # Immediate mode under WATCH: a write in between makes EXEC fail and
            # redis-py runs this again on fresh data.
            own_raw, default_raw = await pipe.hmget(keys.POLICIES_KEY, [portal, DEFAULT_PORTAL])
            own = None if own_raw is None else _stored(portal, own_raw)
            if own is not None:
                current = own
            elif default_raw is not None:
                current = _stored(DEFAULT_PORTAL, default_raw)
            else:
                current = NOT_ENFORCED
            new = change(current)
            pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            pipe.hset(keys.POLICIES_KEY, portal, new.to_json())
            pipe.publish(keys.POLICIES_CHANNEL, portal)
            return own, new

        before, after = await self._transaction(portal, "update", attempt, watch=keys.POLICIES_KEY)
        _audit_change("policy_set", portal, actor, reason, before, after)
        return before, after

    async def delete_policy(
        self, portal: str, *, actor: str | None = None, reason: str | None = None
    ) -> bool:
        """Remove the portal's policy; True if it had one."""

        def command(pipe: Pipeline) -> None:
            pipe.hget(keys.POLICIES_KEY, portal)
            pipe.hdel(keys.POLICIES_KEY, portal)

        results = await self._write(check_portal_id(portal), "delete", command)
        audit.emit(
            "policy_deleted",
            portal=portal,
            user=actor,
            actor=actor,
            reason=reason,
            existed=bool(results[1]),
            before=_as_dict(_readable(results[0])),
        )
        return bool(results[1])

    async def revoke(
        self,
        portal: str,
        *,
        at: float | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> float:
        """Make every user of the portal verify again: verifications at or before
        ``at`` (default: now) stop counting. Returns the stored time.
        """
        check_portal_id(portal)
        when = time.time() if at is None else at
        if not math.isfinite(when):
            raise ConfigurationError(f"a revocation time must be finite, got {when!r}")
        await self._write(
            portal,
            "revoke trust in",
            lambda pipe: pipe.hset(keys.REVOCATIONS_KEY, portal, repr(when)),
        )
        audit.emit(
            "portal_revoked",
            portal=portal,
            user=actor,
            actor=actor,
            reason=reason,
            revoked_before=when,
        )
        return when

    async def list_revocations(self) -> dict[str, float]:
        """Every portal's revocation time; read from Redis."""
        try:
            raw = await self._client.hgetall(keys.REVOCATIONS_KEY)
        except _REDIS_ERRORS as exc:
            raise StoreError(f"cannot list the portal revocations: {exc}") from exc
        out: dict[str, float] = {}
        for k, v in raw.items():
            at = _revocation(_text(k), v)
            if at is not None:
                out[_text(k)] = at
        return out

    async def list_policies(self) -> dict[str, PortalPolicy]:
        """Every stored policy (``default`` included), validated; read from Redis."""
        try:
            raw = await self._client.hgetall(keys.POLICIES_KEY)
        except _REDIS_ERRORS as exc:
            raise StoreError(f"cannot list the 2FA policies: {exc}") from exc
        return {_text(k): _stored(_text(k), v) for k, v in raw.items()}

    async def _write(
        self, portal: str, what: str, command: Callable[[Pipeline], object]
    ) -> list[Any]:
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                command(pipe)
                pipe.publish(keys.POLICIES_CHANNEL, portal)
                results: list[Any] = await pipe.execute()
        except _REDIS_ERRORS as exc:
            raise StoreError(f"cannot {what} the 2FA policy of portal {portal!r}: {exc}") from exc
        # Our own subscriber will also hear it, but read-your-writes must not wait for it.
        self._invalidate(portal)
        return results

    async def _transaction(
        self,
        portal: str,
        what: str,
        attempt: Callable[[Pipeline], Awaitable[_R]],
        *,
        watch: str,
    ) -> _R:
        try:
            result: _R = await self._client.transaction(attempt, watch, value_from_callable=True)
        except _REDIS_ERRORS as exc:
            raise StoreError(f"cannot {what} the 2FA policy of portal {portal!r}: {exc}") from exc
        self._invalidate(portal)
        return result

    # -- cache invalidation ----------------------------------------------------------

    def _invalidate(self, portal: str) -> None:
        self._generation += 1
        self.invalidations += 1
        if portal in (FLUSH_ALL, DEFAULT_PORTAL):
            # Every unlisted portal resolved to ``default``, so all entries may be stale.
            self._cache.clear()
        else:
            self._cache.pop(portal, None)

    def _subscription_lost(self, cause: BaseException | None = None) -> None:
        if self._subscribed.is_set():
            logger.warning("policy invalidation subscription lost (%r); caching disabled", cause)
        elif cause is not None:
            logger.debug("policy invalidation subscription still down: %r", cause)
        self._subscribed.clear()
        self._invalidate(FLUSH_ALL)

    def _subscription_confirmed(self) -> None:
        # Flush *after* the confirmation: anything changed while we were not
        # subscribed is re-read; anything changed from now on will be announced.
        self._invalidate(FLUSH_ALL)
        self._subscribed.set()

    async def _listen(self) -> None:
        delay = _BACKOFF_MIN
        while True:
            pubsub = self._client.pubsub()
            connection: AbstractConnection | None = None
            saved_retry: Retry | None = None
            try:
                await pubsub.subscribe(keys.POLICIES_CHANNEL)
                connection = pubsub.connection
                if connection is not None:
                    # redis-py would otherwise reconnect and re-subscribe silently
                    # (retrying for seconds), hiding the gap in which messages were
                    # lost. With no retries, a drop reaches us at once and we stop
                    # trusting the cache. The connection is ours until aclose().
                    saved_retry, connection.retry = connection.retry, Retry(NoBackoff(), 0)
                awaiting_pong = False
                while True:
                    message = await pubsub.get_message(timeout=_IDLE_PING_SECONDS)
                    if message is None:
                        if awaiting_pong:
                            raise RedisConnectionError("no reply to PING on the subscription")
                        await pubsub.ping()
                        awaiting_pong = True
                        continue
                    awaiting_pong = False
                    if message["type"] == "subscribe":
                        self._subscription_confirmed()
                        delay = _BACKOFF_MIN
                    elif message["type"] == "message":
                        self._invalidate(_text(message["data"]))
            except Exception as exc:  # noqa: BLE001
                # Any failure, ours or redis-py's, means "not subscribed": retry.
                self._subscription_lost(exc)
            finally:
                self._subscription_lost()  # also on cancellation
                if connection is not None and saved_retry is not None:
                    # It goes back to the client's pool: leave it as we found it.
                    connection.retry = saved_retry
                with contextlib.suppress(Exception):
                    # (redis-py leaves aclose unannotated.)
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)


def _revocation(portal: str, raw: bytes | str | None) -> float | None:
    if raw is None:
        return None
    try:
        at = float(raw)
    except ValueError:
        at = math.nan
    if not math.isfinite(at):
        # Unreadable: fail closed (everything revoked) rather than trust silently.
        logger.error("portal %r: stored revocation time %r is invalid", portal, raw)
        return math.inf
    return at


def _readable(raw: bytes | str | None) -> PortalPolicy | None:
    """A stored policy for the audit trail's "before"; garbage reads as None."""
    if raw is None:
        return None
    try:
        return PortalPolicy.from_json(raw)
    except PolicyError:
        return None


def _as_dict(policy: PortalPolicy | None) -> dict[str, Any] | None:
    return None if policy is None else policy.to_dict()


def _audit_change(
    event: str,
    portal: str,
    actor: str | None,
    reason: str | None,
    before: PortalPolicy | None,
    after: PortalPolicy,
) -> None:
    audit.emit(
        event,
        portal=portal,
        user=actor,
        actor=actor,
        reason=reason,
        before=_as_dict(before),
        after=after.to_dict(),
        changed=sorted(
            k for k, v in after.to_dict().items() if before is None or before.to_dict()[k] != v
        ),
    )


def _stored(portal: str, raw: bytes | str) -> PortalPolicy:
    """A policy read back from Redis; garbage is an error naming the portal."""
    try:
        return PortalPolicy.from_json(raw)
    except PolicyError as exc:
        raise PolicyError(
            exc.field, f"portal {portal!r}: stored policy is invalid: {exc}"
        ) from None
