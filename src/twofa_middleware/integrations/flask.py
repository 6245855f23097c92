"""Flask: an extension in the ``init_app`` style, over the WSGI adapter's pieces.

The gate runs as Flask's first ``before_request`` hook rather than as WSGI
middleware around ``app.wsgi_app``: the user is known only inside Flask's
request context (Flask-Login's ``current_user``, ``flask.session``, ``g``), and
a WSGI middleware sits outside it. The hook builds the core's ``Request`` from
the same environ with the same function as the WSGI middleware, calls the same
core on the same kind of private loop (``CoreLoop``), and returns the core's
``Response`` unchanged, so the HTTP behaviour is the WSGI middleware's. Our
endpoints under the prefix are answered from the hook too: Flask routes only
after it, so no route needs registering.

    twofa = TwoFactor(app, identity=lambda: current_user)   # or TwoFactor.from_env
    # in a view: g.twofa (or request.environ["twofa"]) is the TwoFactorInfo
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from flask import Flask, g, request
from flask import Response as FlaskResponse

from ..decision import Identity
from ..flow import Passed
from ..flow import TwoFactor as Core
from ..http import Response
from ..identity import identity_from_user
from ..wsgi import CoreLoop, full_path, request_from_environ, wsgi_headers

log = logging.getLogger("twofa_middleware")

# Returns an Identity, a user object (``is_authenticated``, ``username``/``identity``,
# ``group``, ``email``, ``phone``, ``portal``) or None; called inside the request context.
FlaskIdentity = Callable[[], Any]


def flask_login_user() -> Any:
    """The default identity: Flask-Login's ``current_user``."""
    from flask_login import current_user

    return current_user._get_current_object()


class TwoFactor:
    """The Flask extension. ``TwoFactor(app, core=...)`` or ``init_app`` later."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        core: Core | None = None,
        identity: FlaskIdentity | None = None,
        **options: Any,
    ) -> None:
        """Give a ready ``core``, or the core's options as keywords; or use ``from_env``.

        ``identity`` defaults to Flask-Login's ``current_user`` when Flask-Login is
        installed; without it, an ``identity`` callable is required.
        """
        self.core = core if core is not None else Core(**options)
        if identity is None:
            try:
                import flask_login  # noqa: F401
            except ImportError:
                from ..errors import ConfigurationError

                raise ConfigurationError(
                    "TwoFactor(identity=...) is required: Flask-Login is not installed, "
                    "so give a callable returning the signed-in user (or None)"
                ) from None
            identity = flask_login_user
        self.identity = identity
        self.loop = CoreLoop(self.core)
        if app is not None:
            self.init_app(app)

    @classmethod
    def from_env(
        cls,
        app: Flask | None = None,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> TwoFactor:
        """Configure from ``TWOFA_*`` environment variables (see the README)."""
        from ..config import core_from_env

        identity = overrides.pop("identity", None)
        return cls(app, core=core_from_env(environ, **overrides), identity=identity)

    def init_app(self, app: Flask) -> None:
        app.extensions["twofa"] = self
        # First of all before_request hooks: nothing of the app runs before the gate.
        app.before_request_funcs.setdefault(None, []).insert(0, self._gate)

    def close(self) -> None:
        """Release Redis connections and stop the core's loop (also done at exit)."""
        self.loop.close()

    def _identity(self) -> Identity | None:
        found = self.identity()
        if inspect.isawaitable(found):
            found = self.loop.run(_await(found))
        if found is None or isinstance(found, Identity):
            return found
        return identity_from_user(found)

    def _gate(self) -> FlaskResponse | None:
        environ = request.environ
        path = full_path(environ)
        try:
            identity = self._identity()
        except Exception:
            log.exception("identity resolver failed")
            return _flask_response(Response.json(500, {"error": "internal_error"}))
        info = self.core.unguarded(path, identity)
        if info is not None:  # anonymous, or an exempt path: no trip to the core's loop
            environ["twofa"] = info
            g.twofa = info
            return None
        core_request = request_from_environ(environ, self.core, path)
        if core_request is None:
            return _flask_response(Response.json(413, {"error": "body_too_large"}))
        result = self.loop.guard(core_request, identity)
        if isinstance(result, Passed):
            environ["twofa"] = result.info
            g.twofa = result.info
            return None
        return _flask_response(result.response)


async def _await(value: Awaitable[Any]) -> Any:
    return await value


def _flask_response(response: Response) -> FlaskResponse:
    # Set headers as a list: repeated ones (Set-Cookie, Vary) stay separate.
    out = FlaskResponse(response.body, status=response.status, headers=wsgi_headers(response))
    if not any(k.lower() == "content-type" for k, _ in response.headers):
        del out.headers["content-type"]  # Flask's default mimetype: not ours to add
    return out
