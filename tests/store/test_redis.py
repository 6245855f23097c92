"""What only the Redis backend has to prove: round trips, layout, outages."""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.support.redis_server import RedisServer
from twofa_middleware import keys
from twofa_middleware.decision import VerificationState
from twofa_middleware.errors import ConfigurationError, StoreError
from twofa_middleware.store import RedisStore, StoredCode, TotpRecord

from .test_contract import fill

P, U = "acme", "alice"
TAG = keys.user_tag(P, U)
NOW = 1_700_000_000.0
DAY = 86_400.0


async def _calls(raw: Redis) -> dict[str, int]:
    """Commands executed so far, by name, not counting the INFO that asks."""
    stats = await raw.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(stat["calls"])
        for name, stat in stats.items()
        if name != "cmdstat_info"
    }


async def _commands_of(raw: Redis, action: Callable[[], Awaitable[object]]) -> dict[str, int]:
    before = await _calls(raw)
    await action()
    after = await _calls(raw)
    return {name: n - before.get(name, 0) for name, n in after.items() if n != before.get(name)}


async def test_read_state_is_one_round_trip(redis_store: RedisStore, raw_redis: Redis) -> None:
    await redis_store.record_verification(P, U, "dev", "ip", NOW, DAY)
    await _calls(raw_redis)  # the raw client's own connection handshake happens here

    async def read() -> None:
        state = await redis_store.read_state(P, U, "dev", "ip")
        assert state == VerificationState(NOW, NOW, NOW)

    assert await _commands_of(raw_redis, read) == {"hmget": 1}


async def test_record_verification_is_one_script_call(
    redis_store: RedisStore, raw_redis: Redis
) -> None:
    await redis_store.record_verification(P, U, "dev", "ip", NOW, DAY)  # loads the script
    await _calls(raw_redis)

    async def record() -> None:
        await redis_store.record_verification(P, U, "dev2", "ip2", NOW + 1, DAY)

    commands = await _commands_of(raw_redis, record)
    assert commands.pop("evalsha") == 1
    # INFO also counts what ran inside the script: nothing else came from the client.
    assert set(commands) <= {"hset", "hgetall", "hdel", "pexpire", "publish"}


async def test_every_trust_change_is_announced_with_the_users_tag(
    redis_store: RedisStore, raw_redis: Redis
) -> None:
    """The near-caches of every worker (CachedStore) rely on it, whoever writes."""
    async with raw_redis.pubsub() as pubsub:
        await pubsub.subscribe(keys.TRUST_CHANNEL)
        confirmed = await pubsub.get_message(timeout=1)
        assert confirmed is not None and confirmed["type"] == "subscribe"
        await redis_store.record_verification(P, U, "dev", "ip", NOW, DAY)
        await redis_store.revoke_trust(P, U)
        await redis_store.delete_user(P, U)
        for _ in range(3):
            message = await pubsub.get_message(timeout=1)
            assert message is not None
            assert (message["channel"], message["data"]) == (
                keys.TRUST_CHANNEL.encode(),
                TAG.encode(),
            )


async def test_trust_is_one_hash_per_user(redis_store: RedisStore, raw_redis: Redis) -> None:
    await redis_store.record_verification(P, U, "dev", "10.0.0.1", NOW, DAY)

    assert await raw_redis.keys("*") == [keys.user_key(P, U, "trust").encode()]
    assert await raw_redis.hgetall(keys.user_key(P, U, "trust")) == {
        b"u": b"1700000000.0",
        b"d:dev": b"1700000000.0",
        b"i:10.0.0.1": b"1700000000.0",
    }


async def test_factors_do_not_expire(redis_store: RedisStore, raw_redis: Redis) -> None:
    await redis_store.set_totp(P, U, TotpRecord(b"seed", confirmed=True))
    await redis_store.use_totp_step(P, U, 1000)
    await redis_store.set_recovery_codes(P, U, [b"r1"])

    for name in ("totp", "totp_step", "recovery"):
        assert await raw_redis.pttl(keys.user_key(P, U, name)) == -1, name


async def test_the_key_index_outlives_the_keys_it_lists(
    redis_store: RedisStore, raw_redis: Redis
) -> None:
    await redis_store.hit(TAG, "fail", 900)
    await redis_store.put_code(P, U, "login", StoredCode(b"d", NOW), 300)
    await redis_store.claim(TAG, "resend", 60)

    index = keys.key(TAG, "index")
    assert await raw_redis.smembers(index) == {b"count:fail", b"code:login", b"claim:resend"}
    assert 899_000 < await raw_redis.pttl(index) <= 900_000


async def test_delete_user_leaves_no_key_of_the_user(
    redis_store: RedisStore, raw_redis: Redis
) -> None:
    await fill(redis_store, U)
    await fill(redis_store, "bob")

    await redis_store.delete_user(P, U)

    remaining = [k.decode() if isinstance(k, bytes) else k for k in await raw_redis.keys("*")]
    assert [k for k in remaining if k.startswith(keys.key(TAG, ""))] == []
    assert any(k.startswith(keys.key(keys.user_tag(P, "bob"), "")) for k in remaining)


async def test_a_client_that_decodes_responses_is_refused(redis_url: str) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ConfigurationError, match="decode_responses"):
            RedisStore(client)
    finally:
        await client.aclose()


def _every_call(store: RedisStore) -> dict[str, Callable[[], Awaitable[object]]]:
    code = StoredCode(b"d", NOW)
    return {
        "read_state": lambda: store.read_state(P, U, "dev", "ip"),
        "record_verification": lambda: store.record_verification(P, U, "d", "i", NOW, DAY),
        "user_trust": lambda: store.user_trust(P, U),
        "revoke_trust": lambda: store.revoke_trust(P, U),
        "get_totp": lambda: store.get_totp(P, U),
        "set_totp": lambda: store.set_totp(P, U, TotpRecord(b"s", True)),
        "delete_totp": lambda: store.delete_totp(P, U),
        "use_totp_step": lambda: store.use_totp_step(P, U, 1),
        "put_code": lambda: store.put_code(P, U, "login", code, 300),
        "get_code": lambda: store.get_code(P, U, "login"),
        "consume_code": lambda: store.consume_code(P, U, "login", b"d"),
        "set_recovery_codes": lambda: store.set_recovery_codes(P, U, [b"r"]),
        "consume_recovery_code": lambda: store.consume_recovery_code(P, U, b"r"),
        "count_recovery_codes": lambda: store.count_recovery_codes(P, U),
        "delete_user": lambda: store.delete_user(P, U),
        "hit": lambda: store.hit(TAG, "fail", 900),
        "peek": lambda: store.peek(TAG, "fail"),
        "reset": lambda: store.reset(TAG, "fail"),
        "claim": lambda: store.claim(TAG, "resend", 60),
        "ping": store.ping,
    }


async def test_an_outage_raises_store_error_quickly_and_the_store_recovers(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisStore.from_url(redis_url)
    try:
        # Warm up: a pooled connection and loaded scripts, as in a running worker.
        for call in _every_call(store).values():
            await call()
        redis_server.stop()

        started = time.monotonic()
        for name, call in _every_call(store).items():
            with pytest.raises(StoreError) as failure:
                await call()
            assert isinstance(failure.value.__cause__, RedisError | OSError), name
        assert time.monotonic() - started < 3

        redis_server.restart()
        # The same object, not rebuilt: stale connections and the scripts the
        # restarted server forgot are replaced on the way.
        await store.ping()
        await store.record_verification(P, U, "dev", "ip", NOW, DAY)
        assert (await store.read_state(P, U, "dev", "ip")).device_verified_at == NOW
        await store.put_code(P, U, "login", StoredCode(b"d", NOW), 300)
        assert await store.consume_code(P, U, "login", b"d") is True
    finally:
        if redis_server.proc is None:
            redis_server.start()
        await store.close()


async def test_a_stalled_server_cannot_hang_a_call() -> None:
    # A socket that accepts connections in the kernel but never answers.
    with socket.socket() as stalled:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(8)
        port = stalled.getsockname()[1]
        store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3)
        try:
            started = time.monotonic()
            with pytest.raises(StoreError):
                await store.read_state(P, U, "dev", "ip")
            # One timeout, not one per retry: a timed-out command is not sent again.
            assert time.monotonic() - started < 0.55
        finally:
            await store.close()


@pytest.mark.parametrize(
    ("policy", "warned"),
    [
        pytest.param("allkeys-lru", True, id="allkeys-eviction-is-warned-about"),
        pytest.param("volatile-ttl", True, id="ttl-eviction-is-warned-about"),
        pytest.param("noeviction", False, id="noeviction-is-quiet"),
    ],
)
async def test_an_eviction_policy_that_could_drop_counters_is_warned_about_at_start(
    redis_store: RedisStore,
    raw_redis: Redis,
    caplog: pytest.LogCaptureFixture,
    policy: str,
    warned: bool,
) -> None:
    before = (await raw_redis.config_get("maxmemory-policy"))["maxmemory-policy"]
    await raw_redis.config_set("maxmemory-policy", policy)
    try:
        with caplog.at_level("WARNING", logger="twofa_middleware"):
            await redis_store.start()
    finally:
        await raw_redis.config_set("maxmemory-policy", before)
    assert (f"maxmemory-policy is '{policy}'" in caplog.text) is warned
