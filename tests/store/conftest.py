"""Fixtures for the store contract: every test runs against both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from redis.asyncio import Redis

from tests.support.clock import ManualClock
from twofa_middleware.store import MemoryStore, RedisStore, StateStore


@dataclass
class Backend:
    """One backend under test, and the means to look behind its API."""

    clock: ManualClock
    # Redis only: the server's URL and a second, raw client to inspect keys.
    url: str | None = None
    raw: Redis | None = None
    stores: list[StateStore] = field(default_factory=list)

    def make(self, *, max_ips_per_user: int = 20, max_devices_per_user: int = 20) -> StateStore:
        store: StateStore
        if self.url is None:
            store = MemoryStore(
                clock=self.clock,
                max_ips_per_user=max_ips_per_user,
                max_devices_per_user=max_devices_per_user,
            )
        else:
            store = RedisStore.from_url(
                self.url,
                max_ips_per_user=max_ips_per_user,
                max_devices_per_user=max_devices_per_user,
            )
        self.stores.append(store)
        return store

    async def assert_expires(
        self, key: str, seconds: float, present: Callable[[], Awaitable[bool]]
    ) -> None:
        """The record behind ``key`` lives ``seconds``: PTTL on Redis, the clock in memory."""
        assert await present()
        if self.raw is not None:
            pttl = await self.raw.pttl(key)
            assert (seconds - 1) * 1000 < pttl <= seconds * 1000
        else:
            self.clock.advance(seconds - 0.01)
            assert await present()
            self.clock.advance(0.02)
            assert not await present()


@pytest.fixture(params=["memory", "redis"])
def backend_url(request: pytest.FixtureRequest) -> str | None:
    """None for the memory backend, else a clean database on the real redis-server."""
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return None


@pytest.fixture
async def backend(backend_url: str | None) -> AsyncIterator[Backend]:
    raw = None if backend_url is None else Redis.from_url(backend_url)
    b = Backend(clock=ManualClock(), url=backend_url, raw=raw)
    try:
        yield b
    finally:
        for store in b.stores:
            await store.close()
        if raw is not None:
            await raw.aclose()


@pytest.fixture
def store(backend: Backend) -> StateStore:
    return backend.make()


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_url)
    try:
        yield store
    finally:
        await store.close()
