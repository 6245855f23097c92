"""The demo portal: a tiny Starlette app with password login, behind twofa-middleware.

Run:  uvicorn --app-dir examples portal_app:app
Then open http://localhost:8000 (portal "acme") or http://globex.localhost:8000,
sign in as admin, worker or client with password "demo". Codes appear on the
console unless TWOFA_SMTP_HOST is set.

Configured only through the TWOFA_* environment variables (see the README). The
users, portals and pages are shared with the other examples (demo_users.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from demo_users import (
    LOGIN_FAILED_PAGE,
    NOT_AUTHENTICATED,
    SESSION_COOKIE,
    DemoUser,
    check_password,
    core_options,
    demo_environ,
    home_page,
    login_page,
    me_json,
    portal_for_host,
    reason_of,
    user_from_session,
)
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from twofa_middleware.asgi import TwoFactorMiddleware


class SessionBackend(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        user = user_from_session(conn.session)
        if user is None:
            return None
        return AuthCredentials(["authenticated"]), user  # type: ignore[return-value]


async def login_form(request: Request) -> Response:
    return HTMLResponse(login_page(request.headers.get("host", "")))


async def login(request: Request) -> Response:
    form = await request.form()
    username = str(form.get("username", ""))
    if not check_password(username, str(form.get("password", ""))):
        return HTMLResponse(LOGIN_FAILED_PAGE, 401)
    request.session.clear()
    request.session.update(
        {"user": username, "portal": portal_for_host(request.headers.get("host", ""))}
    )
    return RedirectResponse("/", status_code=303)


async def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


async def home(request: Request) -> Response:
    if not request.user.is_authenticated:
        return RedirectResponse("/login", status_code=303)
    user: DemoUser = request.user
    return HTMLResponse(home_page(user, reason_of(request.scope.get("twofa"))))


async def me(request: Request) -> Response:
    if not request.user.is_authenticated:
        return JSONResponse(NOT_AUTHENTICATED, 401)
    user: DemoUser = request.user
    return JSONResponse(me_json(user, reason_of(request.scope.get("twofa"))))


async def health(_request: Request) -> Response:
    return JSONResponse({"ok": True})


def create_app(environ: Mapping[str, str] | None = None, **overrides: Any) -> Starlette:
    """The demo app; ``overrides`` override parts of the core (tests inject a clock)."""
    env = demo_environ(environ)
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=env["TWOFA_SECRET_KEY"],
            session_cookie=SESSION_COOKIE,
            same_site="lax",
            https_only=False,  # the demo works over plain http on localhost
        ),
        Middleware(AuthenticationMiddleware, backend=SessionBackend()),
        Middleware(TwoFactorMiddleware.from_env, environ=env, **core_options(env, **overrides)),
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
