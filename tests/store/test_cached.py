"""CachedStore against a real redis-server: no round trip when warm, coherent across
processes within a second, flushed and off whenever the invalidation channel is down."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import pytest
import redis
from itsdangerous import URLSafeTimedSerializer
from redis.asyncio import Redis

from tests.support.redis_server import RedisServer
from twofa_middleware import keys
from twofa_middleware.config import core_from_env
from twofa_middleware.crypto import Keyring
from twofa_middleware.decision import VerificationState
from twofa_middleware.errors import ConfigurationError, StoreError
from twofa_middleware.flow import retention_seconds
from twofa_middleware.policy import PortalPolicy
from twofa_middleware.settings import RedisSettings
from twofa_middleware.store import CachedStore, RedisStore

P, U = "acme", "alice"
DAY = 86_400.0
ROOT = Path(__file__).resolve().parents[2]

Make = Callable[..., Awaitable[CachedStore]]


@pytest.fixture
async def make(redis_url: str) -> AsyncIterator[Make]:
    """Started CachedStores, each over its own client: each one is another worker."""
    made: list[CachedStore] = []

    async def factory(*, start: bool = True, **options: Any) -> CachedStore:
        store = CachedStore(RedisStore.from_url(redis_url), **options)
        made.append(store)
        if start:
            await store.start()
            assert store.caching_active
        return store

    yield factory
    for store in made:
        await store.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


# INFO itself, the subscriptions' heartbeat, a new connection's handshake.
_NOT_COUNTED = {"cmdstat_info", "cmdstat_ping", "cmdstat_hello", "cmdstat_client|setinfo"}


async def calls(raw: Redis) -> dict[str, int]:
    """Commands executed so far, by name, but for _NOT_COUNTED."""
    stats = await raw.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(stat["calls"])
        for name, stat in stats.items()
        if name not in _NOT_COUNTED
    }


async def commands_of(raw: Redis, action: Callable[[], Awaitable[object]]) -> dict[str, int]:
    before = await calls(raw)
    await action()
    after = await calls(raw)
    return {name: n - before.get(name, 0) for name, n in after.items() if n != before.get(name)}


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> float:
    """Poll ``check`` until true; the elapsed seconds; fail after ``within``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def until(flag: Callable[[], bool], within: float) -> float:
    async def check() -> bool:
        return flag()

    return await eventually(check, within)


def trusted(now: float) -> VerificationState:
    return VerificationState(now, now, now)


async def record(store: CachedStore, now: float, user: str = U) -> None:
    """``record_verification``, then wait for its own announcement to come back (it
    drops the user's entries again, as in every other worker)."""
    seen = store.invalidations
    await store.record_verification(P, user, "dev", "ip", now, DAY)
    if store.caching_active:
        await until(lambda: store.invalidations >= seen + 2, 1.0)


def forgotten(store: CachedStore) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await store.read_state(P, U, "dev", "ip") == VerificationState()

    return check


# --- the hot path ---------------------------------------------------------------------


async def test_a_warm_read_makes_no_redis_command(make: Make, raw: Redis) -> None:
    store = await make()
    now = time.time()
    await record(store, now)
    await calls(raw)  # the raw client's own handshake

    async def read() -> None:
        assert await store.read_state(P, U, "dev", "ip") == trusted(now)

    assert await commands_of(raw, read) == {"hmget": 1}  # cold: one round trip

    async def read_many() -> None:
        for _ in range(50):
            await read()

    assert await commands_of(raw, read_many) == {}
    assert store.hits == 50


async def test_each_device_and_ip_is_its_own_entry(make: Make) -> None:
    store = await make()
    now = time.time()
    await record(store, now)
    assert await store.read_state(P, U, "dev", "ip") == trusted(now)
    assert await store.read_state(P, U, "other", "ip") == VerificationState(None, now, now)
    assert await store.read_state(P, U, None, None) == VerificationState(None, None, now)
    assert len(store) == 3


async def test_nothing_is_cached_before_start(make: Make, raw: Redis) -> None:
    store = await make(start=False)
    await store.record_verification(P, U, "dev", "ip", time.time(), DAY)

    async def reads() -> None:
        for _ in range(3):
            await store.read_state(P, U, "dev", "ip")

    assert await commands_of(raw, reads) == {"hmget": 3}


async def test_never_verified_is_always_read_from_redis(make: Make, raw: Redis) -> None:
    store = await make()

    async def reads() -> None:
        for _ in range(3):
            assert await store.read_state(P, U, "dev", "ip") == VerificationState()

    assert await commands_of(raw, reads) == {"hmget": 3}


async def test_an_entry_is_not_used_past_the_records_minimum_lifetime(
    make: Make, raw: Redis
) -> None:
    """Redis keeps a record at least min_retention after its last verification; past
    that (less the allowed clock skew) it may be gone, so the answer is not cached."""
    clock = [time.time()]
    store = await make(min_retention=DAY, clock_skew=3600.0, clock=lambda: clock[0])
    await record(store, clock[0])
    await store.read_state(P, U, "dev", "ip")

    async def read() -> None:
        await store.read_state(P, U, "dev", "ip")

    clock[0] += DAY - 3600.0 - 1
    assert await commands_of(raw, read) == {}
    clock[0] += 2
    assert await commands_of(raw, read) == {"hmget": 1}
    assert await commands_of(raw, read) == {"hmget": 1}  # and it is not cached again


async def test_a_retention_below_the_minimum_is_refused(make: Make) -> None:
    store = await make()
    with pytest.raises(ConfigurationError, match="min_retention"):
        await store.record_verification(P, U, "dev", "ip", time.time(), 3600.0)


async def test_the_cache_is_bounded(make: Make) -> None:
    store = await make(max_users=2, max_entries_per_user=2)
    now = time.time()
    for user in ("u1", "u2", "u3"):
        await record(store, now, user)
        await store.read_state(P, user, "dev", "ip")
    assert len(store) == 2
    for ip in ("ip1", "ip2", "ip3"):
        await store.read_state(P, "u3", "dev", ip)
    assert len(store) <= 3


# --- coherence across workers -----------------------------------------------------------


@pytest.mark.parametrize("change", ["revoke_trust", "delete_user"])
async def test_a_revocation_in_one_worker_is_obeyed_by_another_within_a_second(
    make: Make, change: str
) -> None:
    a, b = await make(), await make()
    now = time.time()
    await record(a, now)
    assert await b.read_state(P, U, "dev", "ip") == trusted(now)
    assert await b.read_state(P, U, "dev", "ip") == trusted(now)
    assert b.hits == 1  # B serves it from memory ...

    await getattr(a, change)(P, U)
    assert await a.read_state(P, U, "dev", "ip") == VerificationState()  # read-your-writes
    assert await eventually(forgotten(b), 1.0) < 1.0  # ... until A revokes it


async def test_a_plain_redis_store_announces_its_changes_too(make: Make, redis_url: str) -> None:
    """Admin tools use RedisStore directly; their resets reach every near-cache."""
    b = await make()
    admin = RedisStore.from_url(redis_url)
    try:
        now = time.time()
        await admin.record_verification(P, U, "dev", "ip", now, DAY)
        assert await b.read_state(P, U, "dev", "ip") == trusted(now)
        await admin.delete_user(P, U)
        assert await eventually(forgotten(b), 1.0) < 1.0
    finally:
        await admin.close()


async def test_a_new_verification_elsewhere_replaces_the_cached_one(make: Make) -> None:
    a, b = await make(), await make()
    first = time.time() - 7200
    await a.record_verification(P, U, "dev", "ip", first, DAY)
    assert await b.read_state(P, U, "dev", "ip") == trusted(first)
    second = first + 3600
    await a.record_verification(P, U, "dev", "ip", second, DAY)

    async def renewed() -> bool:
        return await b.read_state(P, U, "dev", "ip") == trusted(second)

    assert await eventually(renewed, 1.0) < 1.0


async def test_a_star_or_garbage_message_forgets_everyone(make: Make, raw: Redis) -> None:
    b = await make()
    now = time.time()
    for message in ("*", "not a tag"):
        await record(b, now)
        await b.read_state(P, U, "dev", "ip")
        assert len(b) == 1
        await raw.publish(keys.TRUST_CHANNEL, message)
        await until(lambda: len(b) == 0, 1.0)


@pytest.fixture
async def b_with_hook(
    redis_url: str,
) -> AsyncIterator[tuple[CachedStore, Callable[[Callable[[], Awaitable[None]]], None]]]:
    """A started CachedStore whose next Redis read runs a hook before returning: the
    moment at which the read is in flight."""
    inner = RedisStore.from_url(redis_url)
    store = CachedStore(inner)
    hooks: list[Callable[[], Awaitable[None]]] = []
    real = inner.read_state

    async def read_state(*args: Any) -> VerificationState:
        state = await real(*args)
        while hooks:
            await hooks.pop()()
        return state

    inner.read_state = read_state  # type: ignore[method-assign]
    await store.start()
    yield store, hooks.append
    await store.close()


async def test_a_read_racing_a_revocation_is_not_cached(
    make: Make,
    b_with_hook: tuple[CachedStore, Callable[[Callable[[], Awaitable[None]]], None]],
) -> None:
    a, (b, on_next_read) = await make(), b_with_hook
    now = time.time()
    await record(a, now)

    async def revoked_meanwhile() -> None:
        seen = b.invalidations
        await a.revoke_trust(P, U)
        await until(lambda: b.invalidations > seen, 1.0)  # B has heard of it

    on_next_read(revoked_meanwhile)
    assert await b.read_state(P, U, "dev", "ip") == trusted(now)  # the in-flight answer ...
    assert await b.read_state(P, U, "dev", "ip") == VerificationState()  # ... was not kept


# --- the invalidation channel down --------------------------------------------------------


async def test_a_dropped_subscription_flushes_and_disables_the_cache(
    make: Make, raw: Redis, redis_url: str
) -> None:
    b = await make()
    now = time.time()
    await record(b, now)
    assert await b.read_state(P, U, "dev", "ip") == trusted(now)
    # Kill B's subscription, then change Redis without announcing it, before B can react.
    with redis.Redis.from_url(redis_url) as sync:
        sync.client_kill_filter(_type="pubsub")
        sync.delete(keys.user_key(P, U, "trust"))
    assert await eventually(forgotten(b), 1.0) < 1.0
    # It comes back by itself, and caches again.
    await until(lambda: b.caching_active, 5.0)
    await record(b, now)
    await b.read_state(P, U, "dev", "ip")

    async def read() -> None:
        await b.read_state(P, U, "dev", "ip")

    assert await commands_of(raw, read) == {}


async def test_a_silent_server_stops_the_cache_within_the_lease(
    make: Make, redis_server: RedisServer
) -> None:
    """No FIN, no error, just silence (a partition): the lease runs out, the cache is
    not used, and reads fail closed."""
    b = await make(lease=0.5)
    now = time.time()
    await record(b, now)
    assert await b.read_state(P, U, "dev", "ip") == trusted(now)
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        await until(lambda: not b.caching_active, 1.0)
        assert time.monotonic() - stopped <= 0.5 + 0.1
        with pytest.raises(StoreError):
            await b.read_state(P, U, "dev", "ip")
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    await until(lambda: b.caching_active, 5.0)
    assert await b.read_state(P, U, "dev", "ip") == trusted(now)


async def test_a_restart_flushes_the_cache_and_caching_resumes(
    make: Make, redis_server: RedisServer, redis_url: str, raw: Redis
) -> None:
    b = await make()
    now = time.time()
    await record(b, now)
    assert await b.read_state(P, U, "dev", "ip") == trusted(now)

    redis_server.stop()
    try:
        await until(lambda: not b.caching_active, 2.0)
        with pytest.raises(StoreError):  # fail closed: no cached answer while down
            await b.read_state(P, U, "dev", "ip")
    finally:
        redis_server.start()
    # The restart lost the data: B must not remember it.
    assert await b.read_state(P, U, "dev", "ip") == VerificationState()
    await until(lambda: b.caching_active, 10.0)
    await record(b, now)
    await b.read_state(P, U, "dev", "ip")

    async def read() -> None:
        await b.read_state(P, U, "dev", "ip")

    assert await commands_of(raw, read) == {}


# --- two operating-system processes ---------------------------------------------------------


class Worker:
    """tests/support/gate_process.py in a subprocess: the gate of another worker."""

    def __init__(self, redis_url: str, secret: str, portal: str, user: str, cookie: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.gate_process",
                *(redis_url, secret, portal, user, cookie),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    async def next_line(self) -> tuple[float, str, str, int]:
        """The next change the worker reports (its start-up included)."""
        stdout: IO[str] | None = self.proc.stdout
        assert stdout is not None
        async with asyncio.timeout(15):
            line = await asyncio.to_thread(stdout.readline)
        if not line:
            raise AssertionError(f"the worker process ended (exit code {self.proc.poll()})")
        at, verdict, reason, hits = line.split()
        return float(at), verdict, reason, int(hits)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


async def test_a_reset_and_a_policy_change_are_obeyed_by_another_process_within_a_second(
    redis_url: str,
) -> None:
    secret = "two-process-test-secret-that-is-long-enough-0123"
    settings = RedisSettings.from_url(redis_url)
    store = RedisStore.from_url(redis_url)  # what the admin tools use
    policy = PortalPolicy(enforce=True, reauth_hours=24)
    await settings.set_policy(P, policy)
    keyring = Keyring(secret)
    token = "a-device-token-of-the-test"
    device = keyring.digest("device", P, U, token)[:16].hex()
    cookie = URLSafeTimedSerializer(keyring.signing_key).dumps([P, U, token], salt="twofa.device")
    await store.record_verification(P, U, device, "127.0.0.1", time.time() - 7200, DAY * 2)
    worker = Worker(redis_url, secret, P, U, str(cookie))
    try:
        _, verdict, reason, _ = await worker.next_line()
        assert (verdict, reason) == ("pass", "device_trusted")
        await asyncio.sleep(0.3)  # the worker serves it from its near-cache meanwhile

        # 1. The helpdesk resets the user (the admin tools' RedisStore.delete_user).
        reset_at = time.time()
        await store.delete_user(P, U)
        at, verdict, reason, hits = await worker.next_line()
        assert (verdict, reason) == ("challenge", "new_device")
        assert at - reset_at < 1.0
        assert hits > 10  # it really was answering from memory before the reset

        # 2. The user verifies again (2 h ago, on this device) ...
        await store.record_verification(
            P, U, device, "127.0.0.1", time.time() - 7200, retention_seconds(policy)
        )
        _, verdict, _, _ = await worker.next_line()
        assert verdict == "pass"
        await asyncio.sleep(0.3)
        # ... and an administrator shortens re-authentication to one hour.
        changed_at = time.time()
        await settings.set_policy(P, policy.replace(reauth_hours=1))
        at, verdict, reason, _ = await worker.next_line()
        assert (verdict, reason) == ("challenge", "reauth_due")
        assert at - changed_at < 1.0
    finally:
        worker.stop()
        await store.close()
        await settings.close()


# --- wiring -------------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "cached"), [(None, True), ("1", True), ("0", False)])
async def test_the_configuration_puts_the_near_cache_in_front_of_redis(
    redis_url: str, flag: str | None, cached: bool
) -> None:
    env = {"TWOFA_REDIS_URL": redis_url, "TWOFA_SECRET_KEY": "k" * 48, "TWOFA_PORTALS": "{}"}
    if flag is not None:
        env["TWOFA_NEAR_CACHE"] = flag
    core = core_from_env(env)
    try:
        assert isinstance(core.store, CachedStore) is cached
        assert isinstance(core.store, RedisStore) is not cached
        await core.start()  # subscribes the near-cache
        if isinstance(core.store, CachedStore):
            assert core.store.caching_active
    finally:
        await core.close()
    if isinstance(core.store, CachedStore):
        assert not core.store.caching_active


def test_a_bad_near_cache_flag_is_refused(redis_url: str) -> None:
    env = {"TWOFA_REDIS_URL": redis_url, "TWOFA_SECRET_KEY": "k" * 48, "TWOFA_NEAR_CACHE": "maybe"}
    with pytest.raises(ConfigurationError, match="TWOFA_NEAR_CACHE"):
        core_from_env(env)
