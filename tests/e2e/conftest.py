"""End-to-end fixtures: each demo example under a real server (uvicorn for ASGI,
waitress for WSGI; the ``framework`` parameter), with a real Redis, a
real SMTP server (aiosmtpd) and a real HTTP SMS gateway. Time is an injected clock
so expiry is tested without sleeping.

The client IP is set per request through X-Forwarded-For: the server trusts the
loopback peer as a proxy (TWOFA_TRUSTED_PROXIES=127.0.0.1), as a deployment
behind a reverse proxy would.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import h11
import httpx
import pytest

from tests.support.live_server import LiveServer
from tests.support.live_wsgi_server import LiveWSGIServer
from tests.support.redis_server import RedisServer
from tests.support.sms_gateway import Gateway
from tests.support.smtp_server import SmtpServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SECRET = "e2e-secret-key-that-is-long-enough-0123456789"
HTML = {"accept": "text/html,application/xhtml+xml"}
JSON = {"accept": "application/json"}
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Clock:
    """Wall-clock time that tests can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.frozen_at: float | None = None

    def __call__(self) -> float:
        base = time.time() if self.frozen_at is None else self.frozen_at
        return base + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def freeze(self) -> None:
        """Stop the clock where it is (``advance`` still moves it), for exact boundaries."""
        self.frozen_at = time.time()


@dataclass
class Portal:
    """One running demo app and the real services behind it."""

    url: str
    clock: Clock
    smtp: SmtpServer
    sms: Gateway
    redis: RedisServer
    env: dict[str, str] = field(default_factory=dict)
    # Which example serves it ("starlette", "flask", ...) and its server world:
    # "asgi" (uvicorn) or "wsgi" (waitress). WebSocket tests skip for "wsgi".
    framework: str = "starlette"
    kind: str = "asgi"

    @property
    def websockets(self) -> bool:
        """Whether the app serves WebSockets (Django's ASGIHandler refuses them itself)."""
        return self.kind == "asgi" and not self.framework.startswith("django")

    def browser(self, host: str = "acme.localhost", ip: str = "198.51.100.10") -> Browser:
        return Browser(self, host, ip)


async def wait_for_sms(
    gateway: Gateway,
    phone: str,
    seen: int = 0,
    timeout: float = 5.0,  # noqa: ASYNC109 - polled: requests arrive from the gateway's thread
) -> str:
    """The code of the first SMS to ``phone`` among the gateway's requests after ``seen``."""
    deadline = time.monotonic() + timeout
    while True:
        for request in gateway.requests[seen:]:
            if request.json and request.json.get("to") == phone:
                match = re.search(r"\b(\d{6})\b", request.json["body"])
                assert match, request.json
                return match.group(1)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no SMS to {phone!r} within {timeout} s")
        await asyncio.sleep(0.01)


class Browser:
    """A user agent: its own cookie jar, a Host (portal) and a client IP."""

    def __init__(self, portal: Portal, host: str, ip: str) -> None:
        self.portal = portal
        self.host = host
        self.ip = ip
        self.client = httpx.AsyncClient(base_url=portal.url, follow_redirects=False, timeout=10)

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"host": self.host, "x-forwarded-for": self.ip, **(extra or {})}

    async def get(self, path: str, **headers: str) -> httpx.Response:
        return await self.client.get(path, headers=self.headers(HTML | headers))

    async def get_json(self, path: str) -> httpx.Response:
        return await self.client.get(path, headers=self.headers(JSON))

    async def post_form(self, path: str, data: dict[str, str], **headers: str) -> httpx.Response:
        return await self.client.post(path, data=data, headers=self.headers(HTML | headers))

    async def post_json(self, path: str, data: dict[str, Any]) -> httpx.Response:
        return await self.client.post(path, json=data, headers=self.headers(JSON))

    async def login(self, username: str, password: str = "demo") -> httpx.Response:
        response = await self.post_form("/login", {"username": username, "password": password})
        assert response.status_code == 303, response.text
        return response

    async def csrf(self, path: str = "/_2fa/challenge") -> str:
        page = await self.get(path)
        match = CSRF.search(page.text)
        assert match, page.text
        return match.group(1)

    async def email_code(self, to: str) -> str:
        """Ask for an email code (JSON API) and read it from the real SMTP server."""
        response = await self.post_json("/_2fa/challenge/email/send", {})
        assert response.status_code == 200, response.text
        received = await self.portal.smtp.wait_for(to)
        body = received.message.get_body(preferencelist=("plain",))
        assert body is not None
        match = re.search(r"\b(\d{6})\b", body.get_content())
        assert match
        return match.group(1)

    async def pass_email(self, username: str, portal: str = "acme") -> None:
        code = await self.email_code(f"{username}@{portal}.test")
        response = await self.post_json("/_2fa/challenge/email/verify", {"code": code})
        assert response.status_code == 200, response.text

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def head(self, path: str, **headers: str) -> httpx.Response:
        return await self.client.head(path, headers=self.headers(HTML | headers))

    async def sms_code(self, phone: str) -> str:
        """Ask for an SMS code (JSON API) and read it from the real SMS gateway."""
        seen = len(self.portal.sms.requests)
        response = await self.post_json("/_2fa/challenge/sms/send", {})
        assert response.status_code == 200, response.text
        return await wait_for_sms(self.portal.sms, phone, seen)

    async def pass_sms(self, phone: str) -> None:
        code = await self.sms_code(phone)
        response = await self.post_json("/_2fa/challenge/sms/verify", {"code": code})
        assert response.status_code == 200, response.text

    def cookie_header(self, **replace: str | None) -> str:
        """The Cookie header this browser sends, with cookies replaced (None drops one)."""
        jar: dict[str, str | None] = {c.name: c.value for c in self.client.cookies.jar}
        jar.update(replace)
        return "; ".join(f"{name}={value}" for name, value in jar.items() if value is not None)

    async def raw(
        self, method: str, target: str, accept: str = "application/json", **headers: str
    ) -> httpx.Response:
        """Send ``target`` byte for byte (httpx would resolve ``..`` and merge slashes),
        with this browser's Host, client IP and cookies, over a fresh connection."""
        url = httpx.URL(self.portal.url)
        sent = self.headers({"accept": accept, "cookie": self.cookie_header(), **headers})
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method=method,
            target=target,
            headers=[(k, v) for k, v in sent.items() if v] + [("connection", "close")],
        )
        reader, writer = await asyncio.open_connection(url.host, url.port)
        status, response_headers, body = 0, [], b""
        try:
            writer.write(conn.send(request) + conn.send(h11.EndOfMessage()))
            await writer.drain()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    response_headers = [(k.decode(), v.decode()) for k, v in event.headers]
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        finally:
            writer.close()
            await writer.wait_closed()
        return httpx.Response(status, headers=response_headers, content=body)

    async def replay(self, request: httpx.Request) -> httpx.Response:
        """Send an exact copy of a request sent before (same body, same cookies as
        then), outside this browser's cookie jar: what an attacker who captured it does."""
        copy = httpx.Request(
            request.method, request.url, headers=request.headers, content=request.content
        )
        async with httpx.AsyncClient(follow_redirects=False, timeout=10) as client:
            return await client.send(copy)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
def sms(gateway: Gateway) -> Gateway:
    """The demo's SMS webhook target: the shared gateway fixture."""
    return gateway


def demo_env(redis_url: str, smtp: SmtpServer, sms: Gateway) -> dict[str, str]:
    return {
        "TWOFA_SECRET_KEY": SECRET,
        "TWOFA_REDIS_URL": redis_url,
        "TWOFA_SMTP_HOST": smtp.host,
        "TWOFA_SMTP_PORT": str(smtp.port),
        "TWOFA_SMTP_FROM": "2fa@demo.test",
        "TWOFA_SMTP_STARTTLS": "false",
        "TWOFA_SMS_WEBHOOK_URL": sms.url,
        "TWOFA_TRUSTED_PROXIES": "127.0.0.1",
    }


def load_demo(module: str = "portal_app") -> Any:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(module)


# Every example implements the same demo contract; the suite runs against each,
# under a real server of its world. framework -> (example module, world).
EXAMPLE_APPS = {
    "starlette": ("portal_app", "asgi"),
    "flask": ("flask_app", "wsgi"),
    "fastapi": ("fastapi_app", "asgi"),
    "django-asgi": ("django_portal.asgi", "asgi"),
    "django-wsgi": ("django_portal.wsgi", "wsgi"),
}


@pytest.fixture(params=list(EXAMPLE_APPS))
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def serve_example(
    stack: ExitStack,
    framework: str,
    env: dict[str, str],
    clock: Clock,
    prepare: Callable[[Any], None] | None = None,
    **options: Any,
) -> tuple[str, str]:
    """Start ``framework``'s example with ``env``, ``clock`` and other core ``options``:
    its URL and world. ``prepare(app)`` may change the app before it is served."""
    module, kind = EXAMPLE_APPS[framework]
    app = load_demo(module).create_app(env, clock=clock, **options)
    if prepare is not None:
        prepare(app)
    # A WSGI app (and Django, which has no ASGI lifespan) owns its core's loop
    # thread: close it once the server is gone (callbacks run last-in first-out).
    twofa = getattr(app, "extensions", {}).get("twofa")
    close = twofa.close if twofa is not None else getattr(app, "close_twofa", None)
    if close is not None:
        stack.callback(close)
    if kind == "asgi":
        lifespan = "auto" if framework.startswith("django") else "on"
        return stack.enter_context(LiveServer(app, lifespan=lifespan)).url, kind
    return stack.enter_context(LiveWSGIServer(app)).url, kind


@pytest.fixture
async def portal(
    redis_url: str, redis_server: RedisServer, smtp: SmtpServer, sms: Gateway, framework: str
) -> AsyncIterator[Portal]:
    clock = Clock()
    env = demo_env(redis_url, smtp, sms)
    with ExitStack() as stack:
        url, kind = serve_example(stack, framework, env, clock)
        yield Portal(url, clock, smtp, sms, redis_server, env, framework, kind)


@pytest.fixture
async def browser(portal: Portal) -> AsyncIterator[Browser]:
    b = portal.browser()
    yield b
    await b.aclose()


PortalFactory = Callable[[dict[str, Any]], Portal]


@pytest.fixture
def start_portal(
    redis_url: str, redis_server: RedisServer, smtp: SmtpServer, sms: Gateway, framework: str
) -> Iterator[PortalFactory]:
    """Start the demo with the given policies (TWOFA_PORTALS) instead of the demo's own."""
    with ExitStack() as stack:

        def start(policies: dict[str, Any]) -> Portal:
            clock = Clock()
            env = demo_env(redis_url, smtp, sms) | {"TWOFA_PORTALS": json.dumps(policies)}
            url, kind = serve_example(stack, framework, env, clock)
            return Portal(url, clock, smtp, sms, redis_server, env, framework, kind)

        yield start
