"""The demo portal as a Flask app (WSGI), behind twofa-middleware's Flask extension.

Run:  PYTHONPATH=examples waitress-serve --port 8000 flask_app:app
Then open http://localhost:8000 (portal "acme") or http://globex.localhost:8000,
sign in as admin, worker or client with password "demo".

The same contract and TWOFA_* variables as portal_app.py (see demo_users.py).
The signed-in user lives in Flask's session; the extension reads it through the
``identity`` callable (with Flask-Login, ``identity`` can be left out).
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
from flask import Flask, g, jsonify, redirect, request, session

from twofa_middleware.integrations.flask import TwoFactor


def current_user() -> DemoUser | None:
    return user_from_session(session)


def create_app(environ: Mapping[str, str] | None = None, **overrides: Any) -> Flask:
    """The demo app; ``overrides`` override parts of the core (tests inject a clock)."""
    env = demo_environ(environ)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=env["TWOFA_SECRET_KEY"],
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=False,  # the demo works over plain http on localhost
    )
    TwoFactor.from_env(app, environ=env, identity=current_user, **core_options(env, **overrides))

    @app.get("/login")
    def login_form() -> Any:
        return login_page(request.host)

    @app.post("/login")
    def login() -> Any:
        username = request.form.get("username", "")
        if not check_password(username, request.form.get("password", "")):
            return LOGIN_FAILED_PAGE, 401
        session.clear()
        session.update({"user": username, "portal": portal_for_host(request.host)})
        return redirect("/", 303)

    @app.post("/logout")
    def logout() -> Any:
        session.clear()
        return redirect("/login", 303)

    @app.get("/")
    def home() -> Any:
        user = current_user()
        if user is None:
            return redirect("/login", 303)
        return home_page(user, reason_of(g.get("twofa")))

    @app.get("/api/me")
    def me() -> Any:
        user = current_user()
        if user is None:
            return jsonify(NOT_AUTHENTICATED), 401
        return jsonify(me_json(user, reason_of(g.get("twofa"))))

    @app.get("/health")
    def health() -> Any:
        return jsonify({"ok": True})

    return app


app = create_app()
