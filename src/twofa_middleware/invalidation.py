"""A pub/sub subscription that says when an in-process cache may be trusted.

Pub/sub is fire-and-forget: a message published while our connection is down is
lost for good, and a connection can die silently (a peer that vanished without a
FIN). So a cache fed by invalidation messages is trusted only while this
``Invalidator`` can prove it would have heard every message:

- not before SUBSCRIBE is confirmed, and the cache is reset (flushed) on every
  confirmation, drop and reconnect;
- only within a *lease*: the subscription is PINGed every ``lease / 4`` seconds,
  and each PONG proves that every message published before that PING was sent
  has been delivered (and handled: messages and replies arrive in order on one
  connection, and handlers run before the next message is read). ``active`` is
  false once the last such proof is older than ``lease``, so a change published
  at time *t* is obeyed from *t* + ``lease`` on at the latest, whatever happened
  to the network;
- a subscription that stays silent for ``dead_after`` seconds is dropped and
  reconnected (with a flush), as is one that errors.

The owner passes two callbacks: ``on_message(data)`` for each message and
``on_reset()`` for a flush. Both run on the event loop, synchronously.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Final

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from .errors import ConfigurationError

logger = logging.getLogger(__name__)

_BACKOFF_MIN: Final = 0.1
_BACKOFF_MAX: Final = 1.0


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class Invalidator:
    """Keeps one subscription to ``channels`` up; ``active`` while it provably is."""

    def __init__(
        self,
        client: aioredis.Redis,
        channels: Sequence[str],
        *,
        on_message: Callable[[str], None],
        on_reset: Callable[[], None],
        lease: float = 1.0,
        dead_after: float = 5.0,
        start_wait: float = 2.0,
        name: str = "twofa-invalidation",
    ) -> None:
        if not (math.isfinite(lease) and lease > 0):
            raise ConfigurationError(f"lease must be a positive number of seconds, got {lease!r}")
        if not dead_after >= lease:
            raise ConfigurationError(f"dead_after ({dead_after!r}) must be >= lease ({lease!r})")
        self._client = client
        self._channels = tuple(channels)
        self._on_message = on_message
        self._on_reset = on_reset
        self._lease = lease
        self._ping_every = lease / 4
        self._dead_after = dead_after
        self._start_wait = start_wait
        self._name = name
        self._subscribed = False
        # Monotonic time before which every published message has been handled.
        self._proven = -math.inf
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.resets = 0
        """How many flushes happened (drops, reconnects); for tests and metrics."""

    @property
    def active(self) -> bool:
        """True only while the subscription is confirmed and proven within the lease."""
        return self._subscribed and time.monotonic() - self._proven < self._lease

    @property
    def subscribed(self) -> bool:
        return self._subscribed

    async def start(self) -> None:
        """Start the subscriber; wait (a little) for the first confirmation."""
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._listen(), name=self._name)
        try:
            await asyncio.wait_for(self._ready.wait(), self._start_wait)
        except TimeoutError:
            # Not fatal: the cache is simply not used until the subscription is up.
            logger.warning("%s: subscription not up yet; caching disabled", self._name)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the subscriber ----------------------------------------------------------

    def _lost(self, cause: BaseException | None = None) -> None:
        if self._subscribed and self._task is not None:  # (not when closing)
            logger.warning("%s: subscription lost (%r); caching disabled", self._name, cause)
        elif cause is not None:
            logger.debug("%s: subscription still down: %r", self._name, cause)
        self._subscribed = False
        self._ready.clear()
        self.resets += 1
        self._on_reset()

    def _confirmed(self) -> None:
        # Flush *after* the confirmation: whatever changed while we were not
        # subscribed is re-read; whatever changes from now on will be announced.
        self.resets += 1
        self._on_reset()
        self._proven = time.monotonic()
        self._subscribed = True
        self._ready.set()

    async def _listen(self) -> None:
        delay = _BACKOFF_MIN
        while True:
            pubsub = self._client.pubsub()
            connection: AbstractConnection | None = None
            saved_retry: Retry | None = None
            try:
                await pubsub.subscribe(*self._channels)
                connection = pubsub.connection
                if connection is not None:
                    # redis-py would otherwise reconnect and re-subscribe silently
                    # (retrying for seconds), hiding the gap in which messages were
                    # lost. With no retries, a drop reaches us at once and we stop
                    # trusting the cache. The connection is ours until aclose().
                    saved_retry, connection.retry = connection.retry, Retry(NoBackoff(), 0)
                confirmations = 0
                heard = time.monotonic()
                next_ping = heard + self._ping_every
                while True:
                    now = time.monotonic()
                    if now >= next_ping:
                        if now - heard > self._dead_after:
                            raise RedisConnectionError(
                                f"no reply on the subscription for {self._dead_after} s"
                            )
                        # The PING carries its send time; its PONG proves delivery
                        # of everything published before it.
                        await pubsub.ping(repr(now))
                        next_ping = now + self._ping_every
                    message = await pubsub.get_message(timeout=max(0.0, next_ping - now))
                    if message is None:
                        continue
                    heard = time.monotonic()
                    kind = message["type"]
                    if kind == "message":
                        self._on_message(_text(message["data"]))
                    elif kind == "pong":
                        if self._subscribed:
                            with contextlib.suppress(ValueError):
                                self._proven = max(self._proven, float(_text(message["data"])))
                    elif kind == "subscribe":
                        confirmations += 1
                        if confirmations == len(self._channels):
                            self._confirmed()
                            delay = _BACKOFF_MIN
            except Exception as exc:  # noqa: BLE001
                # Any failure, ours or redis-py's, means "not subscribed": retry.
                self._lost(exc)
            finally:
                self._lost()  # also on cancellation
                if connection is not None and saved_retry is not None:
                    # It goes back to the client's pool: leave it as we found it.
                    connection.retry = saved_retry
                with contextlib.suppress(Exception):
                    # (redis-py leaves aclose unannotated.)
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)
