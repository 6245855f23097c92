"""The demo contract every example implements, whatever its framework.

Two portals by host (acme at localhost / acme.localhost, globex at
globex.localhost), three users per portal (admin, worker, client; password
"demo"), and the pages: GET/POST /login, POST /logout, GET /, GET /api/me,
GET /health. Each example only translates its framework's request to these.
"""

from __future__ import annotations

import hmac
import html
import json
import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twofa_middleware.portals import HostPortals
from twofa_middleware.settings.base import SettingsProvider
from twofa_middleware.settings.memory import MemorySettings
from twofa_middleware.settings.redis import RedisSettings
from twofa_middleware.settings.static import parse_portals

PORTALS = {"acme": "Acme Corp", "globex": "Globex"}
GROUPS = {"admin": "administrator", "worker": "worker", "client": "client"}
PHONES = {"admin": "+15550100", "worker": "+15550101", "client": "+15550102"}
PASSWORD = "demo"  # noqa: S105 - the documented demo password
# acme enforces 2FA for everyone; globex only for administrators, on a new IP.
DEMO_POLICIES = (
    '{"acme": {"enforce": true},'
    ' "globex": {"enforce": true, "groups": ["administrator"], "ip_change_only": true}}'
)
EXEMPT_PATHS = ["/login", "/logout", "/health"]
SESSION_COOKIE = "demo_session"

portal_of = HostPortals(suffix=".localhost", allowed=frozenset(PORTALS), default="acme")


@dataclass(frozen=True)
class DemoUser:
    """A signed-in demo user, with the attributes the middleware reads."""

    username: str
    portal: str

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.username

    @property
    def identity(self) -> str:
        return self.username

    @property
    def group(self) -> str:
        return GROUPS[self.username]

    @property
    def email(self) -> str:
        return f"{self.username}@{self.portal}.test"

    @property
    def phone(self) -> str:
        return PHONES[self.username]


def user_from_session(session: Mapping[str, Any]) -> DemoUser | None:
    user = session.get("user")
    portal = session.get("portal")
    if user in GROUPS and portal in PORTALS:
        return DemoUser(user, portal)
    return None


def portal_for_host(host: str) -> str:
    return portal_of.for_host(host) or "acme"


def check_password(username: str, password: str) -> bool:
    return username in GROUPS and hmac.compare_digest(password.encode(), PASSWORD.encode())


def page(title: str, body: str) -> str:
    return (
        f"<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>{html.escape(title)}</title><main style='font-family:system-ui;max-width:32rem;"
        f"margin:2rem auto;padding:0 1rem'>{body}</main>"
    )


def login_page(host: str) -> str:
    name = PORTALS[portal_for_host(host)]
    return page(
        "Sign in",
        f"<h1>Sign in to {html.escape(name)}</h1>"
        "<form method=post action=/login>"
        "<p><label>User <select name=username><option>admin<option>worker<option>client"
        "</select></label></p><p><label>Password <input name=password type=password></label></p>"
        "<p><button>Sign in</button></p></form><p>Password: <code>demo</code></p>",
    )


LOGIN_FAILED_PAGE = page("Sign in", "<p>Wrong user or password. <a href=/login>Try again</a></p>")


def reason_of(twofa: Any) -> str | None:
    """The decision's reason from what the middleware left for the app."""
    return twofa.decision.reason.value if twofa and twofa.decision else None


def home_page(user: DemoUser, reason: str | None) -> str:
    return page(
        "Home",
        f"<h1>Welcome, {html.escape(user.username)}</h1>"
        f"<p>Portal <b>{html.escape(PORTALS[user.portal])}</b>, group "
        f"<b>{html.escape(user.group)}</b>. 2FA decision: "
        f"<code>{html.escape(reason or '-')}</code>.</p>"
        "<p><a href=/_2fa/enroll/totp>Set up an authenticator app</a> · "
        "<a href=/_2fa/recovery>Recovery codes</a>"
        + (
            " · <a href=/_2fa/admin>Portal 2FA settings</a>"
            if user.group == "administrator"
            else ""
        )
        + "</p>"
        "<form method=post action=/logout><button>Sign out</button></form>",
    )


def me_json(user: DemoUser, reason: str | None) -> dict[str, Any]:
    return {
        "user": user.username,
        "group": user.group,
        "portal": user.portal,
        "twofa_reason": reason,
    }


NOT_AUTHENTICATED = {"error": "not_authenticated"}


def demo_environ(environ: Mapping[str, str] | None) -> dict[str, str]:
    """The environment with the demo's defaults: a development key, the demo policies."""
    env = dict(os.environ if environ is None else environ)
    if not env.get("TWOFA_SECRET_KEY"):
        # A development key made fresh at each start: sessions and device cookies end
        # with the process. Set TWOFA_SECRET_KEY to keep them.
        print("[demo] TWOFA_SECRET_KEY not set: using a random development key", file=sys.stderr)
        env["TWOFA_SECRET_KEY"] = secrets.token_urlsafe(48)
    return env


class DemoRedisSettings(RedisSettings):
    """Policies in Redis (the admin page and the CLI write them), seeded with the demo's
    policies for portals that have none yet. The same policies are the fallback for a
    Redis that lost its data, so a restart of Redis never switches 2FA off."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("fallback") is None:
            kwargs["fallback"] = json.loads(DEMO_POLICIES)
        super().__init__(*args, **kwargs)

    async def start(self) -> None:
        await super().start()
        existing = await self.list_policies()
        for portal, policy in parse_portals(json.loads(DEMO_POLICIES)).items():
            if portal not in existing:
                await self.set_policy(portal, policy, actor="demo", reason="demo defaults")


def demo_settings(env: Mapping[str, str]) -> SettingsProvider | None:
    """Writable demo policies, unless TWOFA_PORTALS / TWOFA_PORTALS_FILE set them."""
    if "TWOFA_PORTALS" in env or "TWOFA_PORTALS_FILE" in env:
        return None
    if env.get("TWOFA_REDIS_URL"):
        return DemoRedisSettings.from_url(env["TWOFA_REDIS_URL"])
    return MemorySettings(json.loads(DEMO_POLICIES))


def core_options(env: Mapping[str, str], **overrides: Any) -> dict[str, Any]:
    """The middleware options every example passes (tests add a clock).

    With writable policies (no TWOFA_PORTALS*), administrators get the admin page at
    /_2fa/admin.
    """
    settings = demo_settings(env)
    options: dict[str, Any] = {
        "portal_resolver": portal_of,
        "portal_names": PORTALS,
        "exempt_paths": EXEMPT_PATHS,
        "allow_memory_store": True,
        # Without TWOFA_SMTP_HOST / TWOFA_SMS_WEBHOOK_URL the demo prints codes.
        "console_codes": True,
    }
    if settings is not None:
        options.update(settings=settings, admin_page=True)
    return {**options, **overrides}
