"""The demo portal as a FastAPI app (ASGI), behind twofa-middleware.

Run:  uvicorn --app-dir examples fastapi_app:app
Then open http://localhost:8000 (portal "acme") or http://globex.localhost:8000,
sign in as admin, worker or client with password "demo"; the API is described
at /docs (its 401 from the middleware included).

The same contract and TWOFA_* variables as portal_app.py (see demo_users.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

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
from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection

from twofa_middleware.asgi import TwoFactorMiddleware
from twofa_middleware.integrations.fastapi import (
    TWOFA_401_RESPONSE,
    TwoFactorInfo,
    twofa_decision,
)

TwoFA = Annotated[TwoFactorInfo, Depends(twofa_decision)]


class SessionBackend(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        user = user_from_session(conn.session)
        if user is None:
            return None
        return AuthCredentials(["authenticated"]), user  # type: ignore[return-value]


def create_app(environ: Mapping[str, str] | None = None, **overrides: Any) -> FastAPI:
    """The demo app; ``overrides`` override parts of the core (tests inject a clock)."""
    env = demo_environ(environ)
    app = FastAPI(
        title="twofa demo portal",
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key=env["TWOFA_SECRET_KEY"],
                session_cookie=SESSION_COOKIE,
                same_site="lax",
                https_only=False,  # the demo works over plain http on localhost
            ),
            Middleware(AuthenticationMiddleware, backend=SessionBackend()),
            Middleware(TwoFactorMiddleware.from_env, environ=env, **core_options(env, **overrides)),
        ],
    )

    @app.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request) -> str:
        return login_page(request.headers.get("host", ""))

    @app.post("/login")
    async def login(
        request: Request,
        username: Annotated[str, Form()] = "",
        password: Annotated[str, Form()] = "",
    ) -> Response:
        if not check_password(username, password):
            return HTMLResponse(LOGIN_FAILED_PAGE, 401)
        request.session.clear()
        request.session.update(
            {"user": username, "portal": portal_for_host(request.headers.get("host", ""))}
        )
        return RedirectResponse("/", status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    @app.get("/", responses=TWOFA_401_RESPONSE)
    async def home(request: Request, twofa: TwoFA) -> Response:
        if not request.user.is_authenticated:
            return RedirectResponse("/login", status_code=303)
        user: DemoUser = request.user
        return HTMLResponse(home_page(user, reason_of(twofa)))

    @app.get("/api/me", responses=TWOFA_401_RESPONSE)
    async def me(request: Request, twofa: TwoFA) -> Response:
        if not request.user.is_authenticated:
            return JSONResponse(NOT_AUTHENTICATED, 401)
        user: DemoUser = request.user
        return JSONResponse(me_json(user, reason_of(twofa)))

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    return app


app = create_app()
