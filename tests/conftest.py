from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from tests.support.redis_server import RedisServer
from tests.support.sms_gateway import Gateway, start_gateway, stop_gateway
from twofa_middleware import audit


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole test session, on a free port."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean database on the session's redis-server (restarted if a test stopped it)."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    # Audit events of an earlier test are written by a background thread: let them
    # land before the flush, not in the middle of this test.
    audit.flush(timeout=5.0)
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client on the test database, to look behind the code under test."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    """A real HTTP SMS gateway on 127.0.0.1 (plain http: allowed for loopback)."""
    gw, thread = start_gateway(None)
    try:
        yield gw
    finally:
        stop_gateway(gw, thread)
