"""A TwoFactor core driven directly (no web server), for the admin and metrics tests."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from http.cookies import SimpleCookie

from tests.support.smtp_server import SmtpServer
from twofa_middleware.decision import Identity
from twofa_middleware.delivery.email import SmtpEmailSender
from twofa_middleware.flow import Passed, Respond, TwoFactor
from twofa_middleware.http import Request, Response
from twofa_middleware.policy import Group
from twofa_middleware.portals import single_portal
from twofa_middleware.settings import RedisSettings
from twofa_middleware.store import RedisStore

SECRET = "admin-tests-secret-key-that-is-long-enough-0123"
ALICE = Identity("alice", Group.WORKER, email="alice@acme.test")


class Outbox:
    """Email through a real SMTP server (aiosmtpd): the tests read codes from what it got."""

    def __init__(self) -> None:
        self.server = SmtpServer().start()
        self.sender = SmtpEmailSender(
            self.server.host, self.server.port, sender="2fa@acme.test", starttls=False
        )

    def codes(self) -> list[str]:
        found = []
        for message in self.server.messages:
            body = message.get_body(preferencelist=("plain",))
            assert body is not None
            match = re.search(r"\b(\d{6})\b", body.get_content())
            assert match
            found.append(match.group(1))
        return found

    def close(self) -> None:
        self.server.stop()


@dataclass
class Browser:
    """Drives a TwoFactor core directly: one cookie jar, one client IP."""

    core: TwoFactor
    outbox: Outbox
    identity: Identity = ALICE
    ip: str = "198.51.100.7"
    cookies: dict[str, str] = field(default_factory=dict)

    def _request(self, method: str, path: str, body: dict[str, str] | None = None) -> Request:
        headers = {"accept": "application/json", "host": "acme.test"}
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if body is not None:
            headers["content-type"] = "application/json"
        raw = b"" if body is None else json.dumps(body).encode()
        return Request(method, path, b"", headers, client_ip=self.ip, body=raw)

    def _keep_cookies(self, response: Response) -> None:
        for name, value in response.headers:
            if name == "set-cookie":
                jar: SimpleCookie = SimpleCookie()
                jar.load(value)
                self.cookies.update({k: m.value for k, m in jar.items()})

    async def get(self, path: str = "/") -> Passed | Respond:
        return await self.core.process(self._request("GET", path), self.identity)

    async def post(self, path: str, body: dict[str, str]) -> Response:
        result = await self.core.process(self._request("POST", path, body), self.identity)
        assert isinstance(result, Respond)
        self._keep_cookies(result.response)
        return result.response

    async def pass_email(self) -> None:
        sent = await self.post("/_2fa/challenge/email/send", {})
        assert sent.status == 200, sent.body
        await self.core.senders["email"].drain()
        code = self.outbox.codes()[-1]
        verified = await self.post("/_2fa/challenge/email/verify", {"code": code})
        assert verified.status == 200, verified.body

    async def reason(self) -> str:
        result = await self.get()
        if isinstance(result, Passed):
            assert result.info.decision is not None
            return result.info.decision.reason.value
        assert result.decision is not None
        return result.decision.reason.value


def make_core(redis_url: str, outbox: Outbox, portal: str = "acme") -> TwoFactor:
    """A core on the test Redis: RedisSettings (revocable), RedisStore, email by ``outbox``."""
    return TwoFactor(
        settings=RedisSettings.from_url(redis_url),
        store=RedisStore.from_url(redis_url),
        secret_key=SECRET,
        portal_resolver=single_portal(portal),
        email_sender=outbox.sender,
        send_cooldown=0.001,  # the tests send several codes in a row
    )
