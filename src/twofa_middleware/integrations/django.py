"""Django: a middleware (sync and async capable) over the same core.

Add it after Django's ``AuthenticationMiddleware``; it reads ``request.user``::

    MIDDLEWARE = [
        ...,
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "twofa_middleware.integrations.django.TwoFactorMiddleware",
        ...,
    ]
    TWOFA = {
        "group": {"Staff": "worker", "Admins": "administrator"},  # or a callable(user)
        "portal_resolver": "myproject.portals.resolve",          # callables or dotted paths
        "exempt_paths": ["/login/", "/logout/", "/health"],
    }

``TWOFA`` holds the core's options (see ``TwoFactor``); the ``TWOFA_*`` environment
variables fill in the rest (``"environ"`` to give another mapping, ``"from_env":
False`` to give every option yourself). ``"group"`` maps the user to client,
worker or administrator: a callable ``group(user)``, or a mapping from Django group
names (the first match wins, in the mapping's order). ``"identity"`` replaces the
whole resolution: a callable ``identity(request)`` returning an ``Identity``, a user
object or None. The endpoints under the prefix are answered by the middleware
itself: no URLconf entry is needed.

Whether Django serves it under ASGI or WSGI, the core runs on the middleware's
own loop thread (``CoreLoop``, see docs/decisions.md); identity resolution, which
may touch the database, runs in Django's sync context.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from ..decision import Identity
from ..errors import ConfigurationError
from ..flow import Passed, TwoFactor
from ..http import Request, Response
from ..policy import Group
from ..wsgi import MAX_BODY, CoreLoop, environ_headers, environ_path

log = logging.getLogger("twofa_middleware")

_live: weakref.WeakSet[TwoFactorMiddleware] = weakref.WeakSet()
_SPECIAL = ("group", "identity", "environ", "from_env")


def _load(value: Any) -> Any:
    return import_string(value) if isinstance(value, str) else value


def core_from_settings(conf: Mapping[str, Any]) -> TwoFactor:
    """The core from ``settings.TWOFA`` (dotted paths accepted for callables)."""
    options = {k: v for k, v in conf.items() if k not in _SPECIAL}
    for key in ("portal_resolver", "clock", "email_sender", "sms_sender", "settings", "store"):
        if key in options:
            options[key] = _load(options[key])
    if not conf.get("from_env", True):
        return TwoFactor(**options)
    from ..config import core_from_env

    return core_from_env(conf.get("environ"), **options)


def group_resolver(setting: Any) -> Callable[[Any], str | None]:
    """``TWOFA["group"]`` as a function of the user."""
    setting = _load(setting)
    if setting is None:
        return lambda user: getattr(user, "group", None)
    if callable(setting):
        return setting  # type: ignore[no-any-return]
    if isinstance(setting, Mapping):
        mapping = dict(setting)

        def by_django_group(user: Any) -> str | None:
            names = set(user.groups.values_list("name", flat=True))
            return next((g for name, g in mapping.items() if name in names), None)

        return by_django_group
    raise ConfigurationError("TWOFA['group'] must be a callable or a mapping of Django groups")


def identity_from_django_user(user: Any, group_of: Callable[[Any], str | None]) -> Identity | None:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    get_username = getattr(user, "get_username", None)
    user_id = get_username() if callable(get_username) else getattr(user, "username", None)
    if not user_id:
        return None
    group = group_of(user)
    try:
        parsed = None if group is None else Group(str(group))
    except ValueError:
        raise ConfigurationError(
            f"TWOFA group {group!r} is not one of client, worker, administrator"
        ) from None
    return Identity(
        id=str(user_id),
        group=parsed,
        email=getattr(user, "email", None) or None,
        phone=getattr(user, "phone", None) or None,
        portal=getattr(user, "portal", None) or None,
    )


class TwoFactorMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        conf: Mapping[str, Any] = getattr(settings, "TWOFA", {})
        self.core = core_from_settings(conf)
        self.group_of = group_resolver(conf.get("group"))
        self.custom_identity = _load(conf.get("identity"))
        self.loop = CoreLoop(self.core)
        _live.add(self)

    def close(self) -> None:
        self.loop.close()

    # Django calls a middleware instance; sync or async depending on the handler.
    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        path = self._path(request)
        try:
            identity = self._identity(request)
        except Exception:
            log.exception("identity resolver failed")
            return _django_response(Response.json(500, {"error": "internal_error"}))
        info = self.core.unguarded(path, identity)
        if info is not None:  # anonymous, or an exempt path: no trip to the core's loop
            request.twofa = info
            return self.get_response(request)
        core_request = self._request(request, path)
        if core_request is None:
            return _django_response(Response.json(413, {"error": "body_too_large"}))
        result = self.loop.guard(core_request, identity)
        if isinstance(result, Passed):
            request.twofa = result.info
            return self.get_response(request)
        return _django_response(result.response)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        path = self._path(request)
        try:
            # request.user may hit the database: Django's sync context, not the loop.
            identity = await sync_to_async(self._identity)(request)
        except Exception:
            log.exception("identity resolver failed")
            return _django_response(Response.json(500, {"error": "internal_error"}))
        info = self.core.unguarded(path, identity)
        if info is None:
            core_request = self._request(request, path)
            if core_request is None:
                return _django_response(Response.json(413, {"error": "body_too_large"}))
            result = await self.loop.run_async(self.core.guard(core_request, identity))
            if not isinstance(result, Passed):
                return _django_response(result.response)
            info = result.info
        request.twofa = info
        response: Awaitable[HttpResponse] = self.get_response(request)
        return await response
        return _django_response(result.response)

    def _identity(self, request: HttpRequest) -> Identity | None:
        if self.custom_identity is not None:
            found = self.custom_identity(request)
            if found is None or isinstance(found, Identity):
                return found
            return identity_from_django_user(found, self.group_of)
        return identity_from_django_user(getattr(request, "user", None), self.group_of)

    @staticmethod
    def _path(request: HttpRequest) -> str:
        meta = request.META
        scope = getattr(request, "scope", None)  # ASGIRequest
        raw = (
            bytes(scope.get("raw_path") or b"").decode("latin-1")
            if isinstance(scope, Mapping)
            else str(meta.get("REQUEST_URI") or meta.get("RAW_URI") or "")
        )
        return environ_path(request.path, raw)

    def _request(self, request: HttpRequest, path: str) -> Request | None:
        meta = request.META
        method = (request.method or "GET").upper()
        body = b""
        if method == "POST" and self.core.is_endpoint(path):
            try:
                length = int(meta.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > MAX_BODY:
                return None
            body = request.body[: MAX_BODY + 1]
            if len(body) > MAX_BODY:
                return None
        return Request(
            method=method,
            path=path,
            query_string=str(meta.get("QUERY_STRING", "")).encode("latin-1"),
            headers=environ_headers(meta),
            scheme=request.scheme or "http",
            client_ip=meta.get("REMOTE_ADDR") or None,
            body=body,
        )


def close_all() -> None:
    """Close every live middleware's core (tests; processes close at exit anyway)."""
    for middleware in list(_live):
        middleware.close()


def _django_response(response: Response) -> HttpResponse:
    out = HttpResponse(response.body, status=response.status)
    if not any(k.lower() == "content-type" for k, _ in response.headers):
        del out.headers["Content-Type"]  # Django's default: not ours to add
    joined: dict[str, str] = {}
    for name, value in response.headers:
        if name.lower() == "set-cookie":
            # Django keeps cookies apart from headers; one Morsel per Set-Cookie.
            out.cookies.load(value)
        else:
            key = name.lower()
            joined[key] = f"{joined[key]}, {value}" if key in joined else value
    for name, value in joined.items():
        out.headers[name] = value
    return out
