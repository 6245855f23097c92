"""A second worker process for the cross-process tests: runs the gate in a loop.

    python -m tests.support.gate_process REDIS_URL SECRET PORTAL USER COOKIE

Builds the core exactly as a deployment does (``core_from_env``: RedisSettings,
CachedStore over RedisStore), then every 5 ms puts one request from USER with the
device cookie COOKIE through ``TwoFactor.process`` and prints a line whenever the
answer changes: ``<epoch seconds> pass <reason> <cache hits>`` or
``<epoch seconds> challenge <reason> <cache hits>``. It stops when stdin closes.
"""

from __future__ import annotations

import asyncio
import sys
import time

from twofa_middleware.config import core_from_env
from twofa_middleware.decision import Identity
from twofa_middleware.flow import Passed
from twofa_middleware.http import Request
from twofa_middleware.portals import single_portal
from twofa_middleware.store.cached import CachedStore


async def main(redis_url: str, secret: str, portal: str, user: str, cookie: str) -> None:
    env = {"TWOFA_REDIS_URL": redis_url, "TWOFA_SECRET_KEY": secret}
    core = core_from_env(env, portal_resolver=single_portal(portal))
    assert isinstance(core.store, CachedStore)
    await core.start()
    identity = Identity(user)
    request = Request(
        method="GET",
        path="/",
        query_string=b"",
        headers={"cookie": f"twofa_device_{portal}={cookie}", "accept": "application/json"},
        client_ip="127.0.0.1",
    )
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    last = None
    try:
        while not stdin_closed.done():
            result = await core.process(request, identity)
            if isinstance(result, Passed):
                assert result.info.decision is not None
                now = f"pass {result.info.decision.reason.value}"
            else:
                now = f"challenge {result.decision.reason.value if result.decision else '-'}"
            if now != last:
                print(f"{time.time():.6f} {now} {core.store.hits}", flush=True)
                last = now
            await asyncio.sleep(0.005)
    finally:
        await core.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
