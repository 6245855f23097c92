"""The benchmarked app, one variant per process (``BENCH_VARIANT``): see run.py.

A  bare Starlette app
B  A + SessionMiddleware; requests carry a logged-in session (the baseline)
C  B + TwoFactorMiddleware, portal not enforcing
D  B + TwoFactorMiddleware, portal enforcing, user verified (the hot path)
E  D with ip_change_only
F  B + TwoFactorMiddleware, enforcing, request to an exempt path ("/" is exempt
   here, so that the app routes every variant's request alike)
G  B + TwoFactorMiddleware, enforcing, anonymous request (no session)
H  D without the near-cache (TWOFA_NEAR_CACHE=0), for comparison

The middleware is built exactly as a deployment would build it
(``TwoFactorMiddleware.from_env``: RedisSettings for policies, the Redis store
behind the near-cache unless TWOFA_NEAR_CACHE=0). The identity comes from the
session, as an app without AuthenticationMiddleware would supply it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from twofa_middleware.asgi import TwoFactorMiddleware
from twofa_middleware.decision import Identity
from twofa_middleware.policy import Group
from twofa_middleware.portals import single_portal

# Which portal (policy) each variant's middleware serves; run.py stores the policies.
PORTALS = {"C": "open", "D": "strict", "E": "ipmode", "F": "strict", "G": "strict", "H": "strict"}
EXEMPT = ["/health", "/static/"]


async def home(request: Request) -> Response:
    # Like any page of a logged-in app, it looks at the session.
    session = request.scope.get("session") or {}
    return PlainTextResponse(f"ok {session.get('user', '-')}")


def session_identity(scope: Mapping[str, Any]) -> Identity | None:
    """Who is logged in, from the session the host app keeps."""
    session = scope.get("session")
    user = session.get("user") if session else None
    return None if user is None else Identity(id=user, group=Group.WORKER)


def create_app() -> Starlette:
    variant = os.environ["BENCH_VARIANT"]
    secret = os.environ["TWOFA_SECRET_KEY"]
    middleware = []
    if variant != "A":
        middleware.append(Middleware(SessionMiddleware, secret_key=secret))
    if variant in PORTALS:
        middleware.append(
            Middleware(
                TwoFactorMiddleware.from_env,
                identity=session_identity,
                portal_resolver=single_portal(PORTALS[variant]),
                exempt_paths=[*EXEMPT, "/"] if variant == "F" else EXEMPT,
            )
        )
    routes = [Route("/", home), Route("/health", home)]
    return Starlette(routes=routes, middleware=middleware)
