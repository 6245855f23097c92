"""The WSGI middleware, over the same async core as the ASGI one.

The core (decision, challenge flow, Redis store) is written once, with asyncio.
A WSGI server calls us from its own worker threads, so each middleware owns one
private event loop running in a daemon thread (``CoreLoop``) and submits every
call into the core to it. The core's Redis clients, caches and locks therefore
live on that one loop and thread, exactly as they would under an ASGI server;
the request path only hops a thread. See docs/decisions.md.

Place it around your app, after whatever authenticates the user: the default
identity is the WSGI standard ``REMOTE_USER``; give ``identity=`` a callable
that receives the environ for anything richer. The result is in
``environ["twofa"]`` for your app.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from concurrent.futures import Future
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypeVar

from .decision import Identity
from .flow import Passed, Result, TwoFactor
from .http import Request, Response
from .identity import IdentityResolver

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("twofa_middleware")

T = TypeVar("T")

MAX_BODY = 64 * 1024  # our endpoints take a code and a few fields, never more
_ENCODED_SEPARATORS = ("%2f", "%2F", "%5c", "%5C")
_NOT_HEADERS = {"HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"}


class CoreLoop:
    """One private asyncio loop in a daemon thread: where every call into a core runs.

    Started on first use (so a forking server such as gunicorn with ``--preload``
    starts it in each worker, not in the parent) and stopped by ``close()`` or at
    interpreter exit. All core work happens on this one thread, so the in-memory
    store and the core's caches need no locks.
    """

    def __init__(self, core: TwoFactor) -> None:
        self.core = core
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._atexit = False

    def _ensure(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=_run_forever, args=(loop,), name="twofa-core", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
                if not self._atexit:
                    atexit.register(self.close)
                    self._atexit = True
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._ensure())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the core's loop and wait for it (from a sync thread)."""
        return self.submit(coro).result()

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """The same, awaited from another event loop (Django under ASGI)."""
        return await asyncio.wrap_future(self.submit(coro))

    def guard(self, request: Request, identity: Identity | None) -> Result:
        return self.run(self.core.guard(request, identity))

    def close(self, timeout: float = 10.0) -> None:
        """Close the core (Redis connections, pending sends) and stop the loop."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.core.close(), loop).result(timeout)
        except Exception:
            log.warning("closing the two-factor core failed", exc_info=True)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def full_path(environ: Mapping[str, Any]) -> str:
    """The path the core matches: SCRIPT_NAME + PATH_INFO, decoded, unless the raw
    URI hides an encoded separator (then the raw path, so it matches nothing of ours)."""
    # PEP 3333: native strings hold the raw bytes as latin-1; URLs are UTF-8.
    path = _wsgi_str(environ.get("SCRIPT_NAME", "")) + _wsgi_str(environ.get("PATH_INFO", ""))
    raw = str(environ.get("REQUEST_URI") or environ.get("RAW_URI") or "")
    return environ_path(path, raw)


def request_from_environ(
    environ: Mapping[str, Any], core: TwoFactor, path: str | None = None
) -> Request | None:
    """Translate a WSGI environ to the core's Request; None when the body is too large.

    The same rules as the ASGI adapter: the full path (``full_path``, or the one
    given), and only our own POST endpoints have their body read (bounded).
    """
    if path is None:
        path = full_path(environ)
    method = str(environ.get("REQUEST_METHOD", "GET")).upper()
    body = b""
    if method == "POST" and core.is_endpoint(path):
        read = _read_body(environ)
        if read is None:
            return None
        body = read
    return Request(
        method=method,
        path=path,
        query_string=str(environ.get("QUERY_STRING", "")).encode("latin-1"),
        headers=environ_headers(environ),
        scheme=str(environ.get("wsgi.url_scheme", "http")),
        client_ip=environ.get("REMOTE_ADDR") or None,
        body=body,
    )


def environ_path(path: str, raw_uri: str) -> str:
    """The decoded path, unless the raw one hides an encoded separator."""
    raw_path = raw_uri.split("?", 1)[0]
    if any(sep in raw_path for sep in _ENCODED_SEPARATORS):
        # "/_2fa%2fchallenge" must not reach our endpoints or exemptions as if it
        # were "/_2fa/challenge": keep the encoded form so it matches nothing.
        return raw_path
    return path


def environ_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    """Request headers from CGI-style keys (HTTP_*, CONTENT_TYPE, CONTENT_LENGTH)."""
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_") and key not in _NOT_HEADERS:
            name = key[5:].replace("_", "-").lower()
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            name = key.replace("_", "-").lower()
        else:
            continue
        headers[name] = str(value)
    return headers


def _wsgi_str(value: str) -> str:
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value.encode("latin-1", "replace").decode("utf-8", "replace")


def _read_body(environ: Mapping[str, Any]) -> bytes | None:
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        length = -1
    if length > MAX_BODY:
        return None
    if length >= 0:
        return bytes(stream.read(length))
    if environ.get("wsgi.input_terminated"):
        # Chunked body on a server that marks the stream's end: read one byte past
        # the limit to tell "exactly MAX_BODY" from "too large".
        data = bytes(stream.read(MAX_BODY + 1))
        return None if len(data) > MAX_BODY else data
    return b""  # PEP 3333: without CONTENT_LENGTH, do not read


def status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def wsgi_headers(response: Response) -> list[tuple[str, str]]:
    headers = [(k, v) for k, v in response.headers if k.lower() != "content-length"]
    headers.append(("content-length", str(len(response.body))))
    return headers


def remote_user(environ: Mapping[str, Any]) -> Identity | None:
    """The default resolver: the WSGI standard ``REMOTE_USER`` (no group, email, phone)."""
    user = environ.get("REMOTE_USER")
    return Identity(id=str(user)) if user else None


class TwoFactorWSGIMiddleware:
    def __init__(
        self,
        app: WSGIApplication,
        *,
        core: TwoFactor | None = None,
        identity: IdentityResolver = remote_user,
        **options: Any,
    ) -> None:
        """Wrap ``app``. Give a ready ``core``, or the ``TwoFactor`` options as keywords;
        or use ``TwoFactorWSGIMiddleware.from_env``."""
        self.app = app
        # Building the core validates the configuration at start-up.
        self.core = core if core is not None else TwoFactor(**options)
        self.identity = identity
        self.loop = CoreLoop(self.core)

    @classmethod
    def from_env(
        cls,
        app: WSGIApplication,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> TwoFactorWSGIMiddleware:
        """Configure from ``TWOFA_*`` environment variables (see the README)."""
        from .config import core_from_env

        identity = overrides.pop("identity", remote_user)
        return cls(app, core=core_from_env(environ, **overrides), identity=identity)

    def close(self) -> None:
        """Release Redis connections and stop the core's loop (also done at exit)."""
        self.loop.close()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = full_path(environ)
        try:
            # Called on the server's thread: a resolver may read thread-locals.
            found = self.identity(environ)
            identity = self.loop.run(_await(found)) if inspect.isawaitable(found) else found
        except Exception:
            log.exception("identity resolver failed")
            return _send(start_response, Response.json(500, {"error": "internal_error"}))
        info = self.core.unguarded(path, identity)
        if info is not None:  # anonymous, or an exempt path: no trip to the core's loop
            environ["twofa"] = info
            return self.app(environ, start_response)
        request = request_from_environ(environ, self.core, path)
        if request is None:
            return _send(start_response, Response.json(413, {"error": "body_too_large"}))
        result = self.loop.guard(request, identity)
        if isinstance(result, Passed):
            environ["twofa"] = result.info
            return self.app(environ, start_response)
        return _send(start_response, result.response)


async def _await(value: Awaitable[T]) -> T:
    return await value


def _send(start_response: Callable[..., Any], response: Response) -> list[bytes]:
    start_response(status_line(response.status), wsgi_headers(response))
    return [response.body]
