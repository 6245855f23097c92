"""RedisSettings against a real redis-server: storage, caching, cross-process invalidation."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from tests.support.redis_server import RedisServer
from twofa_middleware import keys
from twofa_middleware.errors import ConfigurationError, PolicyError, StoreError
from twofa_middleware.policy import NOT_ENFORCED, Method, PortalPolicy
from twofa_middleware.settings import RedisSettings, SettingsProvider

OLD = PortalPolicy(enforce=True, methods=frozenset({Method.TOTP}))
NEW = PortalPolicy(enforce=True, methods=frozenset({Method.EMAIL}), reauth_hours=2)
RAW = PortalPolicy(enforce=False, methods=frozenset({Method.SMS}))

Make = Callable[..., Awaitable[RedisSettings]]
Hook = Callable[[Callable[[], Awaitable[None]]], None]


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client for writes that bypass RedisSettings (no publish)."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def make(redis_url: str) -> AsyncIterator[Make]:
    """Build started RedisSettings, each with its own client (= a separate worker)."""
    created: list[RedisSettings] = []

    async def factory(*, start: bool = True, cache_ttl: float | None = None) -> RedisSettings:
        settings = RedisSettings.from_url(redis_url, cache_ttl=cache_ttl)
        created.append(settings)
        if start:
            await settings.start()
            assert settings.caching_active
        return settings

    yield factory
    for settings in created:
        await settings.close()


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> float:
    """Poll ``check`` until true; return the elapsed seconds, fail after ``within``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def until_true(flag: Callable[[], bool], within: float) -> None:
    async def check() -> bool:
        return flag()

    await eventually(check, within)


def sees(
    settings: RedisSettings, portal: str, policy: PortalPolicy
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await settings.get_policy(portal) == policy

    return check


async def hmget_calls(raw: aioredis.Redis) -> int:
    stats: dict[str, Any] = await raw.info("commandstats")
    return int(stats.get("cmdstat_hmget", {}).get("calls", 0))


# -- storage ---------------------------------------------------------------------------


async def test_set_get_list_delete(make: Make) -> None:
    admin = await make(start=False)
    settings: SettingsProvider = admin  # what the middleware sees
    assert await settings.get_policy("acme") == NOT_ENFORCED
    await admin.set_policy("acme", OLD)
    await admin.set_policy("beta", {"enforce": True, "groups": ["worker"]})
    assert await settings.get_policy("acme") == OLD
    assert await admin.list_policies() == {
        "acme": OLD,
        "beta": PortalPolicy(enforce=True, groups=frozenset({"worker"})),  # type: ignore[arg-type]
    }
    assert await admin.delete_policy("acme") is True
    assert await admin.delete_policy("acme") is False
    assert await settings.get_policy("acme") == NOT_ENFORCED
    assert set(await admin.list_policies()) == {"beta"}


async def test_default_applies_to_unlisted_portals(make: Make) -> None:
    settings = await make(start=False)
    await settings.set_policy("acme", OLD)
    await settings.set_policy("default", NEW)
    assert await settings.get_policy("acme") == OLD
    assert await settings.get_policy("unlisted") == NEW
    await settings.delete_policy("default")
    assert await settings.get_policy("unlisted") == NOT_ENFORCED


async def test_fallback_covers_portals_redis_holds_nothing_for(
    redis_url: str, raw: aioredis.Redis
) -> None:
    """A Redis that lost its data (restart, FLUSHALL) must not switch 2FA off."""
    settings = RedisSettings.from_url(
        redis_url, fallback={"acme": {"enforce": True}, "default": {"enforce": True}}
    )
    try:
        await settings.set_policy("acme", OLD)
        assert await settings.get_policy("acme") == OLD  # Redis wins while it has a policy
        await raw.flushall()
        assert await settings.get_policy("acme") == PortalPolicy(enforce=True)
        assert await settings.get_policy("unlisted") == PortalPolicy(enforce=True)
    finally:
        await settings.close()


def test_bad_fallback_is_refused_at_start() -> None:
    with pytest.raises(PolicyError, match="portal 'acme': reauth_hours"):
        RedisSettings(aioredis.Redis(), fallback={"acme": {"reauth_hours": 0}})


async def test_writes_are_stored_as_json_and_published(make: Make, raw: aioredis.Redis) -> None:
    settings = await make(start=False)
    async with raw.pubsub() as pubsub:
        await pubsub.subscribe(keys.POLICIES_CHANNEL)
        assert (await pubsub.get_message(timeout=1.0))["type"] == "subscribe"
        await settings.set_policy("acme", OLD)
        await settings.delete_policy("acme")
        published = [await pubsub.get_message(timeout=1.0) for _ in range(2)]
    assert [m["data"] for m in published] == [b"acme", b"acme"]
    await settings.set_policy("acme", OLD)
    stored = await raw.hget(keys.POLICIES_KEY, "acme")
    assert stored is not None
    assert PortalPolicy.from_json(stored) == OLD


@pytest.mark.parametrize(
    ("portal", "stored", "field"),
    [
        ("acme", b"not json", "policy"),
        ("acme", b'{"reauth_hours": -1}', "reauth_hours"),
        ("acme", b'{"methods": ["fax"]}', "methods"),
        ("default", b"[1, 2]", "policy"),
    ],
)
async def test_garbage_in_redis_is_an_error_naming_the_portal(
    make: Make, raw: aioredis.Redis, portal: str, stored: bytes, field: str
) -> None:
    settings = await make()
    await raw.hset(keys.POLICIES_KEY, portal, stored)
    with pytest.raises(PolicyError, match=f"portal '{portal}': stored policy is invalid") as e:
        await settings.get_policy("acme")
    assert e.value.field == field
    with pytest.raises(PolicyError, match=f"portal '{portal}'"):
        await settings.list_policies()


async def test_invalid_writes_are_refused(make: Make, raw: aioredis.Redis) -> None:
    settings = await make(start=False)
    with pytest.raises(PolicyError, match="portal 'acme': reauth_hours") as e:
        await settings.set_policy("acme", {"enforce": True, "reauth_hours": 0})
    assert e.value.field == "reauth_hours"
    with pytest.raises(ConfigurationError, match="non-empty string"):
        await settings.set_policy("", OLD)
    with pytest.raises(ConfigurationError, match="cache_ttl"):
        RedisSettings(raw, cache_ttl=0)
    assert await raw.exists(keys.POLICIES_KEY) == 0


async def test_redis_down_is_a_store_error(redis_server: RedisServer, make: Make) -> None:
    settings = await make(start=False)
    redis_server.stop()
    try:
        with pytest.raises(StoreError):
            await settings.get_policy("acme")
        with pytest.raises(StoreError):
            await settings.set_policy("acme", OLD)
    finally:
        redis_server.start()


# -- caching ---------------------------------------------------------------------------


async def test_cache_hit_does_not_touch_redis(make: Make, raw: aioredis.Redis) -> None:
    settings = await make()
    await settings.set_policy("acme", OLD)
    assert await settings.get_policy("acme") == OLD
    before = await hmget_calls(raw)
    # A write that is not announced is invisible while the cache is trusted ...
    await raw.hset(keys.POLICIES_KEY, "acme", RAW.to_json())
    for _ in range(5):
        assert await settings.get_policy("acme") == OLD
    assert await hmget_calls(raw) == before
    # ... and visible as soon as it is announced.
    await raw.publish(keys.POLICIES_CHANNEL, "acme")
    assert await eventually(sees(settings, "acme", RAW), 1.0) < 1.0


async def test_no_caching_before_start(make: Make, raw: aioredis.Redis) -> None:
    settings = await make(start=False)
    assert not settings.caching_active
    await settings.set_policy("acme", OLD)
    assert await settings.get_policy("acme") == OLD
    await raw.hset(keys.POLICIES_KEY, "acme", RAW.to_json())
    assert await settings.get_policy("acme") == RAW


async def test_cache_ttl_bounds_staleness(make: Make, raw: aioredis.Redis) -> None:
    settings = await make(cache_ttl=0.2)
    await settings.set_policy("acme", OLD)
    assert await settings.get_policy("acme") == OLD
    await raw.hset(keys.POLICIES_KEY, "acme", RAW.to_json())
    assert await eventually(sees(settings, "acme", RAW), 1.0) >= 0.1


async def test_other_worker_sees_change_within_a_second(make: Make) -> None:
    a, b = await make(), await make()
    await a.set_policy("acme", OLD)
    assert await b.get_policy("acme") == OLD  # cached in B
    await a.set_policy("acme", NEW)
    assert await eventually(sees(b, "acme", NEW), 1.0) < 1.0
    await a.delete_policy("acme")
    assert await eventually(sees(b, "acme", NOT_ENFORCED), 1.0) < 1.0


@pytest.mark.parametrize("announce", ["default", "*"])
async def test_default_or_star_invalidates_every_portal(
    make: Make, raw: aioredis.Redis, announce: str
) -> None:
    b = await make()
    await raw.hset(keys.POLICIES_KEY, "default", OLD.to_json())
    assert await b.get_policy("unlisted") == OLD
    assert await b.get_policy("other") == OLD
    await raw.hset(keys.POLICIES_KEY, "default", NEW.to_json())
    await raw.publish(keys.POLICIES_CHANNEL, announce)
    assert await eventually(sees(b, "unlisted", NEW), 1.0) < 1.0
    assert await b.get_policy("other") == NEW


@pytest.fixture
async def b_with_hook(redis_url: str) -> AsyncIterator[tuple[RedisSettings, Hook]]:
    """Settings B (not started) whose first Redis read runs a hook before returning.

    The hook runs after the real read (one pipeline: the policies' HMGET and the
    revocation's HGET) has answered, i.e. while the read is "in flight" from B's
    point of view: the window the generation counter guards.
    """
    client = aioredis.Redis.from_url(redis_url)
    settings = RedisSettings(client)
    hooks: list[Callable[[], Awaitable[None]]] = []
    real_pipeline = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        real_execute = pipe.execute

        async def execute(*args: Any, **kwargs: Any) -> Any:
            result = await real_execute(*args, **kwargs)
            while hooks:
                await hooks.pop()()
            return result

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe

    client.pipeline = pipeline  # type: ignore[method-assign]
    yield settings, hooks.append
    await settings.close()
    await client.aclose()


async def test_read_racing_an_invalidation_is_not_cached(
    make: Make, b_with_hook: tuple[RedisSettings, Hook]
) -> None:
    a, (b, on_next_read) = await make(), b_with_hook
    await b.start()
    await a.set_policy("acme", OLD)

    async def change_lands_meanwhile() -> None:
        seen = b.invalidations
        await a.set_policy("acme", NEW)
        await until_true(lambda: b.invalidations > seen, 1.0)

    on_next_read(change_lands_meanwhile)
    assert await b.get_policy("acme") == OLD  # the in-flight read's answer ...
    assert await b.get_policy("acme") == NEW  # ... was not cached
    assert b.caching_active


async def test_read_in_flight_while_subscribing_is_not_cached(
    raw: aioredis.Redis, b_with_hook: tuple[RedisSettings, Hook]
) -> None:
    b, on_next_read = b_with_hook
    await raw.hset(keys.POLICIES_KEY, "acme", OLD.to_json())

    async def unannounced_change_then_subscribe() -> None:
        await raw.hset(keys.POLICIES_KEY, "acme", NEW.to_json())
        await b.start()
        assert b.caching_active

    on_next_read(unannounced_change_then_subscribe)
    assert await b.get_policy("acme") == OLD
    assert await b.get_policy("acme") == NEW


async def test_restart_flushes_cache_and_invalidation_resumes(
    redis_server: RedisServer, redis_url: str, make: Make, raw: aioredis.Redis
) -> None:
    a, b = await make(), await make()
    await a.set_policy("acme", OLD)
    assert await b.get_policy("acme") == OLD  # cached in B

    redis_server.stop()
    try:
        await until_true(lambda: not b.caching_active, 5.0)
        # Fail closed: no cached answer is served while the subscription is down.
        with pytest.raises(StoreError):
            await b.get_policy("acme")
    finally:
        redis_server.start()
    # A change made while B is still unsubscribed (blocking client: B's task cannot
    # run in between) and never announced. The restart also emptied the database.
    with redis.Redis.from_url(redis_url) as sync:
        sync.hset(keys.POLICIES_KEY, "acme", RAW.to_json())
    assert await b.get_policy("acme") == RAW

    await until_true(lambda: a.caching_active and b.caching_active, 10.0)
    assert await b.get_policy("acme") == RAW  # not the pre-outage value
    await a.set_policy("acme", NEW)
    assert await eventually(sees(b, "acme", NEW), 1.0) < 1.0
    # And B caches again: an unannounced write is not seen.
    await raw.hset(keys.POLICIES_KEY, "acme", OLD.to_json())
    assert await b.get_policy("acme") == NEW


async def test_dropped_subscription_is_noticed_without_restart(redis_url: str, make: Make) -> None:
    b = await make()
    await b.set_policy("acme", OLD)
    assert await b.get_policy("acme") == OLD
    # Kill B's subscriber connection and write unannounced before B can react.
    with redis.Redis.from_url(redis_url) as sync:
        sync.client_kill_filter(_type="pubsub")
        sync.hset(keys.POLICIES_KEY, "acme", RAW.to_json())
    assert await eventually(sees(b, "acme", RAW), 1.0) < 1.0
    await until_true(lambda: b.caching_active, 5.0)
    assert await b.get_policy("acme") == RAW


async def test_policy_changes_are_audited(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    settings = await make(start=False)
    with caplog.at_level(logging.INFO, logger="twofa_middleware.audit"):
        await settings.set_policy("acme", OLD, actor="admin-7")
        await settings.delete_policy("acme", actor="admin-7")
    events = [r.twofa for r in caplog.records if hasattr(r, "twofa")]
    assert [(e["event"], e["portal"], e["user"]) for e in events] == [
        ("policy_set", "acme", "admin-7"),
        ("policy_deleted", "acme", "admin-7"),
    ]
