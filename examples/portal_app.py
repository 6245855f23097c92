"""The demo portal: a tiny Starlette app with password login, behind twofa-middleware.

Run:  uvicorn --app-dir examples portal_app:app
Then open http://localhost:8000 (portal "acme") or http://globex.localhost:8000,
sign in as admin, worker or client with password "demo". Codes appear on the
console unless TWOFA_SMTP_HOST is set.

Configured only through the TWOFA_* environment variables (see the README).
"""

from __future__ import annotations

import hmac
import html
import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from twofa_middleware.asgi import TwoFactorMiddleware
from twofa_middleware.portals import HostPortals

PORTALS = {"acme": "Acme Corp", "globex": "Globex"}
GROUPS = {"admin": "administrator", "worker": "worker", "client": "client"}
PHONES = {"admin": "+15550100", "worker": "+15550101", "client": "+15550102"}
PASSWORD = "demo"  # noqa: S105 - the documented demo password
# acme enforces 2FA for everyone; globex only for administrators, on a new IP.
DEMO_POLICIES = (
    '{"acme": {"enforce": true},'
    ' "globex": {"enforce": true, "groups": ["administrator"], "ip_change_only": true}}'
)


@dataclass(frozen=True)
class DemoUser(BaseUser):
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


class SessionBackend(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        user = conn.session.get("user")
        portal = conn.session.get("portal")
        if user in GROUPS and portal in PORTALS:
            return AuthCredentials(["authenticated"]), DemoUser(user, portal)
        return None


portal_of = HostPortals(suffix=".localhost", allowed=frozenset(PORTALS), default="acme")


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>{html.escape(title)}</title><main style='font-family:system-ui;max-width:32rem;"
        f"margin:2rem auto;padding:0 1rem'>{body}</main>",
        status,
    )


async def login_form(request: Request) -> Response:
    name = PORTALS[portal_of.for_host(request.headers.get("host", "")) or "acme"]
    return _page(
        "Sign in",
        f"<h1>Sign in to {html.escape(name)}</h1>"
        "<form method=post action=/login>"
        "<p><label>User <select name=username><option>admin<option>worker<option>client"
        "</select></label></p><p><label>Password <input name=password type=password></label></p>"
        "<p><button>Sign in</button></p></form><p>Password: <code>demo</code></p>",
    )


async def login(request: Request) -> Response:
    form = await request.form()
    username = str(form.get("username", ""))
    password = str(form.get("password", ""))
    portal = portal_of.for_host(request.headers.get("host", "")) or "acme"
    if username not in GROUPS or not hmac.compare_digest(password.encode(), PASSWORD.encode()):
        return _page("Sign in", "<p>Wrong user or password. <a href=/login>Try again</a></p>", 401)
    request.session.clear()
    request.session.update({"user": username, "portal": portal})
    return RedirectResponse("/", status_code=303)


async def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


async def home(request: Request) -> Response:
    if not request.user.is_authenticated:
        return RedirectResponse("/login", status_code=303)
    user: DemoUser = request.user
    twofa = request.scope.get("twofa")
    reason = twofa.decision.reason.value if twofa and twofa.decision else "-"
    return _page(
        "Home",
        f"<h1>Welcome, {html.escape(user.username)}</h1>"
        f"<p>Portal <b>{html.escape(PORTALS[user.portal])}</b>, group "
        f"<b>{html.escape(user.group)}</b>. 2FA decision: <code>{html.escape(reason)}</code>.</p>"
        "<p><a href=/_2fa/enroll/totp>Set up an authenticator app</a> · "
        "<a href=/_2fa/recovery>Recovery codes</a></p>"
        "<form method=post action=/logout><button>Sign out</button></form>",
    )


async def me(request: Request) -> Response:
    if not request.user.is_authenticated:
        return JSONResponse({"error": "not_authenticated"}, 401)
    user: DemoUser = request.user
    twofa = request.scope.get("twofa")
    return JSONResponse(
        {
            "user": user.username,
            "group": user.group,
            "portal": user.portal,
            "twofa_reason": twofa.decision.reason.value if twofa and twofa.decision else None,
        }
    )


async def health(_request: Request) -> Response:
    return JSONResponse({"ok": True})


def _secret_key(environ: Mapping[str, str]) -> str:
    key = environ.get("TWOFA_SECRET_KEY")
    if key:
        return key
    # A development key made fresh at each start: sessions and device cookies end
    # with the process. Set TWOFA_SECRET_KEY to keep them.
    print("[demo] TWOFA_SECRET_KEY not set: using a random development key", file=sys.stderr)
    return secrets.token_urlsafe(48)


def create_app(environ: Mapping[str, str] | None = None, **core_options: Any) -> Starlette:
    """The demo app; ``core_options`` override parts of the core (tests inject a clock)."""
    env = dict(os.environ if environ is None else environ)
    env["TWOFA_SECRET_KEY"] = _secret_key(env)
    if "TWOFA_PORTALS" not in env and "TWOFA_PORTALS_FILE" not in env:
        env["TWOFA_PORTALS"] = DEMO_POLICIES
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=env["TWOFA_SECRET_KEY"],
            session_cookie="demo_session",
            same_site="lax",
            https_only=False,  # the demo works over plain http on localhost
        ),
        Middleware(AuthenticationMiddleware, backend=SessionBackend()),
        Middleware(
            TwoFactorMiddleware.from_env,
            environ=env,
            portal_resolver=portal_of,
            portal_names=PORTALS,
            exempt_paths=["/login", "/logout", "/health"],
            allow_memory_store=True,
            **core_options,
        ),
    ]
    routes = [
        Route("/", home),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/api/me", me),
        Route("/health", health),
    ]
    return Starlette(routes=routes, middleware=middleware)


app = create_app()
