"""The Redis backend: one hash per user for trust, Lua for every read-modify-write.

Key layout, all under the user's hash tag (``keys.user_key``) or the tag the
caller passes (counters and markers, ``keys.key``):

- ``trust``      hash: ``u``, ``d:<device>``, ``i:<ip>`` -> epoch seconds; expires
                 after the retention the caller passes, so it goes away on its own.
- ``totp``       hash: ``seed`` (sealed bytes), ``confirmed`` ("1"/"0"); no expiry.
- ``totp_step``  the last accepted TOTP step; no expiry, deleted with the enrollment.
- ``recovery``   set of recovery-code digests; no expiry.
- ``code:<purpose>``  hash: ``digest``, ``issued_at``; expires with the code.
- ``count:<name>`` / ``claim:<name>``  counters and markers under any tag.
- ``index``      set of the names above that the caller chooses (code purposes,
                 counters, markers), kept at least as long as the keys it lists.

Why the index: ``delete_user`` must remove every key of the user, SCAN does not
work on a cluster, and a fixed list of purposes and counter names would silently
miss any name the flow adds later. The three scripts that create such keys
record their names in the same atomic step, and ``delete_user`` reads the index
and deletes everything in one WATCH/MULTI transaction, so a key created
concurrently cannot escape it. Digests are stored as raw bytes throughout, so the
client must not decode responses.

Every change to a user's trust (``record_verification``, ``revoke_trust``,
``delete_user``) publishes the user's tag on ``keys.TRUST_CHANNEL`` in the same
atomic step as the write (inside the script, or in the same MULTI), whoever the
caller is, so the near-caches of every process (``CachedStore``) hear of it.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from importlib import resources
from typing import Any, ParamSpec, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, RedisError, ResponseError

from .. import keys
from ..decision import VerificationState
from ..errors import ConfigurationError, StoreError
from .base import CounterState, StoredCode, TotpRecord, UserTrust

__all__ = ["RedisStore"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

# Fixed key names under the user's tag; the variable ones are listed in INDEX.
TRUST = "trust"
TOTP = "totp"
TOTP_STEP = "totp_step"
RECOVERY = "recovery"
INDEX = "index"


log = logging.getLogger("twofa_middleware")


def _wrap_errors(method: Callable[_P, Awaitable[_T]]) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Surface every driver failure as ``StoreError``, so callers fail closed on one type."""

    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await method(*args, **kwargs)
        # OSError covers socket errors and TimeoutError (asyncio's is the builtin
        # since Python 3.11) that escape redis-py's own wrapping.
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis {method.__name__} failed: {exc}") from exc

    return wrapper


def _ms(seconds: float) -> int:
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {seconds!r}")
    return max(1, math.ceil(seconds * 1000))


def _float(raw: bytes | str | None) -> float | None:
    return None if raw is None else float(raw)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _bytes(raw: bytes | str) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode()


def _script(client: Redis, name: str) -> AsyncScript:
    source = resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")
    return client.register_script(source)


class RedisStore:
    """``StateStore`` on Redis (standalone or Cluster: every user's keys share a slot)."""

    def __init__(
        self,
        client: Redis,
        *,
        max_ips_per_user: int = 20,
        max_devices_per_user: int = 20,
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigurationError("RedisStore needs a client with decode_responses=False")
        if max_ips_per_user < 1 or max_devices_per_user < 1:
            raise ConfigurationError("max_ips_per_user and max_devices_per_user must be >= 1")
        self._redis = client
        self._max_ips = max_ips_per_user
        self._max_devices = max_devices_per_user
        self._record = _script(client, "record_verification")
        self._use_step = _script(client, "use_totp_step")
        self._put_code = _script(client, "put_code")
        self._consume_code = _script(client, "consume_code")
        self._hit = _script(client, "hit")
        self._claim = _script(client, "claim")

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        socket_timeout: float = 1.0,
        max_ips_per_user: int = 20,
        max_devices_per_user: int = 20,
    ) -> RedisStore:
        """A store whose calls give up within about ``socket_timeout`` when Redis is down.

        Only connection errors are retried, once: that replaces a pooled connection
        the server closed (a restart) without a second wait on a stalled server, and
        a command that timed out is never sent twice.
        """
        client = Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(
                ExponentialBackoff(cap=0.1, base=0.01),
                retries=1,
                supported_errors=(ConnectionError,),
            ),
        )
        return cls(
            client, max_ips_per_user=max_ips_per_user, max_devices_per_user=max_devices_per_user
        )

    @property
    def client(self) -> Redis:
        """The Redis client (for a ``CachedStore``'s invalidation subscription)."""
        return self._redis

    # --- the request path -------------------------------------------------
    @_wrap_errors
    async def read_state(
        self, portal: str, user: str, device: str | None, ip: str | None
    ) -> VerificationState:
        fields = ["u"]
        if device is not None:
            fields.append(f"d:{device}")
        if ip is not None:
            fields.append(f"i:{ip}")
        values = iter(await self._redis.hmget(keys.user_key(portal, user, TRUST), fields))
        user_at = _float(next(values))
        return VerificationState(
            device_verified_at=_float(next(values)) if device is not None else None,
            ip_verified_at=_float(next(values)) if ip is not None else None,
            user_verified_at=user_at,
        )

    @_wrap_errors
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
        await self._record(
            keys=[keys.user_key(portal, user, TRUST)],
            args=[
                repr(now),
                _ms(retention_seconds),
                self._max_ips,
                self._max_devices,
                "" if device is None else f"d:{device}",
                "" if ip is None else f"i:{ip}",
                keys.TRUST_CHANNEL,
                keys.user_tag(portal, user),
                "" if replaces is None else f"d:{replaces}",
            ],
        )

    @_wrap_errors
    async def user_trust(self, portal: str, user: str) -> UserTrust:
        raw = await self._redis.hgetall(keys.user_key(portal, user, TRUST))
        user_at: float | None = None
        devices: dict[str, float] = {}
        ips: dict[str, float] = {}
        for field, value in raw.items():
            name, at = _text(field), float(value)
            if name == "u":
                user_at = at
            elif name.startswith("d:"):
                devices[name[2:]] = at
            elif name.startswith("i:"):
                ips[name[2:]] = at
        return UserTrust(user_verified_at=user_at, devices=devices, ips=ips)

    @_wrap_errors
    async def revoke_trust(self, portal: str, user: str) -> None:
        tag = keys.user_tag(portal, user)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.key(tag, TRUST))
            pipe.publish(keys.TRUST_CHANNEL, tag)
            await pipe.execute()

    # --- secrets ----------------------------------------------------------
    @_wrap_errors
    async def get_totp(self, portal: str, user: str) -> TotpRecord | None:
        seed, confirmed = await self._redis.hmget(
            keys.user_key(portal, user, TOTP), ["seed", "confirmed"]
        )
        if seed is None:
            return None
        return TotpRecord(sealed_seed=_bytes(seed), confirmed=confirmed in (b"1", "1"))

    @_wrap_errors
    async def set_totp(self, portal: str, user: str, record: TotpRecord) -> None:
        # The last used step is kept: confirming an enrollment rewrites the record
        # after its code's step was used, and that code must not work a second time.
        await self._redis.hset(
            keys.user_key(portal, user, TOTP),
            mapping={"seed": record.sealed_seed, "confirmed": "1" if record.confirmed else "0"},
        )

    @_wrap_errors
    async def delete_totp(self, portal: str, user: str) -> None:
        await self._redis.delete(
            keys.user_key(portal, user, TOTP), keys.user_key(portal, user, TOTP_STEP)
        )

    @_wrap_errors
    async def use_totp_step(self, portal: str, user: str, step: int) -> bool:
        used = await self._use_step(keys=[keys.user_key(portal, user, TOTP_STEP)], args=[step])
        return bool(used)

    @_wrap_errors
    async def put_code(
        self, portal: str, user: str, purpose: str, code: StoredCode, ttl_seconds: float
    ) -> None:
        name = f"code:{purpose}"
        await self._put_code(
            keys=[keys.user_key(portal, user, name), keys.user_key(portal, user, INDEX)],
            args=[_ms(ttl_seconds), name, code.digest, repr(code.issued_at)],
        )

    @_wrap_errors
    async def get_code(self, portal: str, user: str, purpose: str) -> StoredCode | None:
        digest, issued_at = await self._redis.hmget(
            keys.user_key(portal, user, f"code:{purpose}"), ["digest", "issued_at"]
        )
        if digest is None or issued_at is None:
            return None
        return StoredCode(digest=_bytes(digest), issued_at=float(issued_at))

    @_wrap_errors
    async def consume_code(self, portal: str, user: str, purpose: str, digest: bytes) -> bool:
        consumed = await self._consume_code(
            keys=[keys.user_key(portal, user, f"code:{purpose}")], args=[digest]
        )
        return bool(consumed)

    @_wrap_errors
    async def set_recovery_codes(self, portal: str, user: str, digests: Sequence[bytes]) -> None:
        key = keys.user_key(portal, user, RECOVERY)
        # MULTI: no moment at which both the old and the new codes, or neither, work.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if digests:
                pipe.sadd(key, *digests)
            await pipe.execute()

    @_wrap_errors
    async def consume_recovery_code(self, portal: str, user: str, digest: bytes) -> bool:
        return await self._redis.srem(keys.user_key(portal, user, RECOVERY), digest) == 1

    @_wrap_errors
    async def count_recovery_codes(self, portal: str, user: str) -> int:
        return await self._redis.scard(keys.user_key(portal, user, RECOVERY))

    @_wrap_errors
    async def delete_user(self, portal: str, user: str) -> None:
        tag = keys.user_tag(portal, user)
        index = keys.key(tag, INDEX)
        fixed = [keys.key(tag, name) for name in (TRUST, TOTP, TOTP_STEP, RECOVERY, INDEX)]

        async def delete_all(pipe: Pipeline) -> None:
            # Immediate mode under WATCH: if a code or counter is created after this
            # read, EXEC fails and redis-py runs the function again.
            names = await pipe.smembers(index)
            pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            pipe.delete(*fixed, *(keys.key(tag, _text(name)) for name in names))
            pipe.publish(keys.TRUST_CHANNEL, tag)

        await self._redis.transaction(delete_all, index)

    # --- counters and markers ---------------------------------------------
    @_wrap_errors
    async def hit(self, tag: str, name: str, window_seconds: float) -> CounterState:
        counter = f"count:{name}"
        count, ttl_ms = await self._hit(
            keys=[keys.key(tag, counter), keys.key(tag, INDEX)],
            args=[_ms(window_seconds), counter],
        )
        return CounterState(count=int(count), resets_in=int(ttl_ms) / 1000)

    @_wrap_errors
    async def peek(self, tag: str, name: str) -> CounterState:
        counter = keys.key(tag, f"count:{name}")
        # MULTI so the count and its TTL describe the same moment.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(counter)
            pipe.pttl(counter)
            count, ttl_ms = await pipe.execute()
        if count is None:
            return CounterState(count=0, resets_in=0.0)
        return CounterState(count=int(count), resets_in=max(int(ttl_ms), 0) / 1000)

    @_wrap_errors
    async def reset(self, tag: str, name: str) -> None:
        await self._redis.delete(keys.key(tag, f"count:{name}"))

    @_wrap_errors
    async def claim(self, tag: str, name: str, ttl_seconds: float) -> float:
        marker = f"claim:{name}"
        left_ms = await self._claim(
            keys=[keys.key(tag, marker), keys.key(tag, INDEX)], args=[_ms(ttl_seconds), marker]
        )
        # An existing marker always has at least 1 ms left; never report it as 0.0,
        # which would mean "you set it".
        return 0.0 if left_ms == 0 else max(int(left_ms), 1) / 1000

    # --- lifecycle --------------------------------------------------------
    @_wrap_errors
    async def ping(self) -> None:
        await self._redis.ping()

    @_wrap_errors
    async def start(self) -> None:
        """At start-up: warn when Redis may evict what must not be lost (SECURITY 100).

        Attempt counters and single-use markers carry a TTL, so any eviction policy
        but ``noeviction`` may drop them under memory pressure: a fresh attempt
        budget, a code or TOTP step accepted twice. Never fatal: a managed Redis may
        refuse CONFIG, and a Redis that is down is answered per request (503).
        """
        try:
            reply = await self._redis.config_get("maxmemory-policy")
        except ResponseError:
            log.info("Redis refused CONFIG GET maxmemory-policy; make sure it is noeviction")
            return
        except (RedisError, OSError) as exc:
            log.warning("cannot check Redis maxmemory-policy at start: %s", exc)
            return
        values = {_text(k): _text(v) for k, v in reply.items() if k and v}
        policy = values.get("maxmemory-policy")
        if policy is not None and policy != "noeviction":
            log.warning(
                "Redis maxmemory-policy is %r: under memory pressure Redis may evict attempt "
                "counters and single-use markers (extra guesses, replayed codes); set "
                "maxmemory-policy to noeviction",
                policy,
            )

    async def close(self) -> None:
        await self._redis.aclose()
