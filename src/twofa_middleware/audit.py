"""Audit events: structured log records for every security-relevant step.

No codes, secrets or full contact details ever go into an event. Values are
stripped of control characters so a username or ``next`` cannot forge log lines.
A logging failure never changes the security decision.

Each event is, in this order, counted (``metrics``), logged on the
``twofa_middleware.audit`` logger (the record is in ``LogRecord.twofa``), and
handed to every installed sink. ``RedisAuditStream`` is the sink that keeps
each portal's events in a capped Redis stream, ``twofa:audit:<portal>``, which
``twofa audit tail PORTAL`` and ``PortalAdmin.audit_tail`` read. A sink only
queues the event: the request that caused it never waits for Redis, and a full
queue or a Redis failure drops events (counted, logged) instead of failing it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import queue
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, Final, Protocol

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from . import keys, metrics
from .errors import ConfigurationError, StoreError

log = logging.getLogger("twofa_middleware.audit")

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: anything
# that a terminal or str.splitlines() could take for a new line or an escape.
_CONTROL = {i: None for i in (*range(32), *range(127, 160), 0x2028, 0x2029)}

# Entries kept per portal stream (approximately: XADD MAXLEN ~).
STREAM_MAXLEN: Final = 10_000


def clean(value: object) -> str:
    return str(value).translate(_CONTROL)[:200]


def _structured(value: object) -> object:
    """A JSON-able value: text cleaned, numbers and booleans as they are, mappings and
    lists (a policy's before/after) kept structured.
    """
    if isinstance(value, Mapping):
        return {clean(k): _structured(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_structured(v) for v in value]
    if (
        value is None
        or isinstance(value, bool | int)
        or (isinstance(value, float) and math.isfinite(value))
    ):
        return value
    return clean(value)


class AuditSink(Protocol):
    """Receives every audit event; must return at once and never raise into the caller."""

    def submit(self, record: Mapping[str, Any]) -> None: ...


_sinks: tuple[AuditSink, ...] = ()
_sinks_lock = threading.Lock()


def add_sink(sink: AuditSink) -> None:
    """Send every later event to ``sink`` too (once, however often it is added)."""
    global _sinks
    with _sinks_lock:
        if not any(s is sink for s in _sinks):
            _sinks = (*_sinks, sink)


def remove_sink(sink: AuditSink) -> None:
    global _sinks
    with _sinks_lock:
        _sinks = tuple(s for s in _sinks if s is not sink)


def sinks() -> tuple[AuditSink, ...]:
    return _sinks


def emit(event: str, *, portal: str, user: str | None, **fields: object) -> None:
    record: dict[str, Any] = {
        "event": event,
        "portal": clean(portal),
        "user": clean(user),
        "at": time.time(),
    }
    record.update({k: _structured(v) for k, v in fields.items() if v is not None})
    # A broken log handler, metric or sink must never change the security decision.
    with contextlib.suppress(Exception):
        metrics.observe(event, record)
    with contextlib.suppress(Exception):
        log.info(
            "%s portal=%s user=%s %s",
            event,
            record["portal"],
            record["user"],
            " ".join(
                f"{k}={_text(v)}"
                for k, v in record.items()
                if k not in ("event", "portal", "user", "at")
            ),
            extra={"twofa": record},
        )
    for sink in _sinks:
        with contextlib.suppress(Exception):
            sink.submit(record)


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# --- the Redis stream --------------------------------------------------------------


class RedisAuditStream:
    """An ``AuditSink`` appending events to ``twofa:audit:<portal>`` from a thread.

    ``submit`` puts the event on a bounded in-process queue and returns; a daemon
    thread with its own (synchronous) Redis connection writes what is queued in
    one pipeline of ``XADD ... MAXLEN ~ maxlen``. Because the writer is a thread,
    it serves ASGI and WSGI apps and short-lived CLI runs alike, whatever event
    loop (if any) emitted the event. Events that cannot be queued or written are
    dropped and counted in ``dropped``; failures are logged at most once a minute.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        maxlen: int = STREAM_MAXLEN,
        queue_size: int = 10_000,
        batch_size: int = 500,
    ) -> None:
        if maxlen < 1 or queue_size < 1 or batch_size < 1:
            raise ConfigurationError("maxlen, queue_size and batch_size must be >= 1")
        self._client = client
        self.maxlen = maxlen
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._queue: queue.Queue[Mapping[str, Any] | None] = queue.Queue(queue_size)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_error_logged = -math.inf
        self.dropped = 0
        """Events lost (queue full, Redis failing, or submitted after ``close``)."""
        self.written = 0
        _live.add(self)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisAuditStream:
        # Short timeouts and retries: a Redis that is down costs the writer thread
        # about a second per batch, never the requests.
        client = redis.Redis.from_url(
            url,
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            retry=Retry(ExponentialWithJitterBackoff(cap=0.25, base=0.02), 2),
        )
        return cls(client, **options)

    @classmethod
    def shared(cls, url: str) -> RedisAuditStream:
        """This process's stream for ``url``, created and installed as a sink once.

        Several cores (or a core and the admin tools) on one Redis then write each
        event once, not once per instance.
        """
        with _shared_lock:
            stream = _shared.get(url)
            if stream is None or stream._closed:
                stream = cls.from_url(url)
                _shared[url] = stream
        add_sink(stream)
        return stream

    # -- AuditSink ----------------------------------------------------------------

    def submit(self, record: Mapping[str, Any]) -> None:
        if self._closed:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            return
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start()

    # -- lifecycle ----------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far is written (or dropped); True if so."""
        deadline = time.monotonic() + timeout
        done = self._queue.all_tasks_done
        with done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                done.wait(remaining)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to ``timeout``), stop the thread, close the client."""
        remove_sink(self)
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout)
            thread.join(timeout)
        with contextlib.suppress(Exception):
            self._client.close()

    def _start(self) -> None:
        with self._lock:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(
                target=self._run, name="twofa-audit-stream", daemon=True
            )
            self._thread.start()

    def _after_fork(self) -> None:
        # The writer thread does not survive a fork, and the queue's locks may have
        # been held by it: start the child with a fresh queue (and thread on demand).
        self._queue = queue.Queue(self._queue_size)
        self._lock = threading.Lock()
        self._thread = None

    # -- the writer thread ----------------------------------------------------------

    def _run(self) -> None:
        q = self._queue
        while True:
            first = q.get()
            batch = [first]
            while len(batch) < self._batch_size:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            records = [r for r in batch if r is not None]
            try:
                if records:
                    self._write(records)
            finally:
                for _ in batch:
                    q.task_done()
            if len(records) < len(batch):  # the close() sentinel
                return

    def _write(self, records: list[Mapping[str, Any]]) -> None:
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for record in records:
                    pipe.xadd(
                        keys.audit_stream(str(record.get("portal", ""))),
                        {"event": str(record.get("event", "")), "data": _encode(record)},
                        maxlen=self.maxlen,
                        approximate=True,
                    )
                pipe.execute()
            self.written += len(records)
        except Exception as exc:  # noqa: BLE001 - a broken sink must not kill its thread
            self.dropped += len(records)
            now = time.monotonic()
            if now - self._last_error_logged >= 60.0:
                self._last_error_logged = now
                log.warning(
                    "audit stream: could not write %d event(s) to Redis (%s); "
                    "they are still in the log",
                    len(records),
                    exc,
                )


def _encode(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


_shared: dict[str, RedisAuditStream] = {}
_shared_lock = threading.Lock()
_live: weakref.WeakSet[RedisAuditStream] = weakref.WeakSet()


def _reset_after_fork() -> None:
    global _shared_lock, _sinks_lock
    _shared_lock = threading.Lock()
    _sinks_lock = threading.Lock()
    for stream in list(_live):
        stream._after_fork()


def flush(timeout: float = 5.0) -> bool:
    """Wait until every ``RedisAuditStream`` of this process wrote what it was given."""
    deadline = time.monotonic() + timeout
    done = True
    for stream in list(_live):
        with contextlib.suppress(Exception):
            done = stream.flush(max(0.0, deadline - time.monotonic())) and done
    return done


def _flush_at_exit() -> None:
    flush(timeout=2.0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
atexit.register(_flush_at_exit)


async def read_stream(client: aioredis.Redis, portal: str, count: int = 50) -> list[dict[str, Any]]:
    """The portal's last ``count`` audit events, oldest first, each with its stream ``id``."""
    if count < 1:
        raise ConfigurationError(f"count must be at least 1, got {count}")
    try:
        entries = await client.xrevrange(keys.audit_stream(portal), count=count)
    except (RedisError, OSError) as exc:
        raise StoreError(f"cannot read the audit events of portal {portal!r}: {exc}") from exc
    events: list[dict[str, Any]] = []
    for entry_id, fields in reversed(entries or []):
        data = None if fields is None else fields.get(b"data", fields.get("data"))
        try:
            event = json.loads(data) if data is not None else {}
        except ValueError:
            event = {}
        if not isinstance(event, dict):
            event = {}
        event["id"] = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        events.append(event)
    return events
