"""End-to-end fixtures: the demo portal under a real uvicorn, with a real Redis, a
real SMTP server (aiosmtpd) and a real HTTP SMS gateway. Time is an injected clock
so expiry is tested without sleeping.

The client IP is set per request through X-Forwarded-For: the server trusts the
loopback peer as a proxy (TWOFA_TRUSTED_PROXIES=127.0.0.1), as a deployment
behind a reverse proxy would.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live_server import LiveServer
from tests.support.redis_server import RedisServer
from tests.support.sms_gateway import Gateway, start_gateway, stop_gateway
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

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Portal:
    """One running demo app and the real services behind it."""

    url: str
    clock: Clock
    smtp: SmtpServer
    sms: Gateway
    redis: RedisServer
    env: dict[str, str] = field(default_factory=dict)

    def browser(self, host: str = "acme.localhost", ip: str = "198.51.100.10") -> Browser:
        return Browser(self, host, ip)


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


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
def sms() -> Iterator[Gateway]:
    gateway, thread = start_gateway(None)
    try:
        yield gateway
    finally:
        stop_gateway(gateway, thread)


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


def load_demo() -> Any:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    import portal_app

    return portal_app


@pytest.fixture
async def portal(
    redis_url: str, redis_server: RedisServer, smtp: SmtpServer, sms: Gateway
) -> AsyncIterator[Portal]:
    clock = Clock()
    env = demo_env(redis_url, smtp, sms)
    app = load_demo().create_app(env, clock=clock)
    with LiveServer(app) as server:
        yield Portal(server.url, clock, smtp, sms, redis_server, env)


@pytest.fixture
async def browser(portal: Portal) -> AsyncIterator[Browser]:
    b = portal.browser()
    yield b
    await b.aclose()
