"""The pure ASGI middleware (no BaseHTTPMiddleware: it must see WebSockets too).

Place it after the app's authentication middleware (it reads ``scope["user"]``
by default) and before everything else. Scopes it does not handle (lifespan)
pass straight through, after starting and stopping the core with the app.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .flow import Passed, TwoFactor
from .http import Request, Response
from .identity import IdentityResolver, resolve_identity, scope_user

log = logging.getLogger("twofa_middleware")

MAX_BODY = 64 * 1024  # our endpoints take a code and a few fields, never more
_ENCODED_SEPARATORS = (b"%2f", b"%2F", b"%5c", b"%5C")


class TwoFactorMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        core: TwoFactor | None = None,
        identity: IdentityResolver = scope_user,
        **options: Any,
    ) -> None:
        """Wrap ``app``. Give a ready ``core``, or the ``TwoFactor`` options as keywords
        (``settings``, ``store``, ``secret_key``, ``portal_resolver``, ...); or use
        ``TwoFactorMiddleware.from_env`` for a twelve-factor deployment."""
        self.app = app
        # Building the core validates the configuration: a bad setting stops the
        # start-up with a message naming it, not a user's request later.
        self.core = core if core is not None else TwoFactor(**options)
        self.identity = identity

    @classmethod
    def from_env(
        cls,
        app: ASGIApp,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> TwoFactorMiddleware:
        """Configure from ``TWOFA_*`` environment variables (see the README)."""
        from .config import core_from_env

        identity = overrides.pop("identity", scope_user)
        return cls(app, core=core_from_env(environ, **overrides), identity=identity)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), send)
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = _full_path(scope)
        try:
            identity = await resolve_identity(self.identity, scope)
        except Exception:
            log.exception("identity resolver failed")
            await self._refuse(
                scope, receive, send, Response.json(500, {"error": "internal_error"})
            )
            return
        info = self.core.unguarded(path, identity)
        if info is not None:  # anonymous, or an exempt path: nothing more to look at
            scope["twofa"] = info
            await self.app(scope, receive, send)
            return
        request = await self._request(scope, receive, path)
        if request is None:
            await _send(send, Response.json(413, {"error": "body_too_large"}))
            return
        result = await self.core.guard(request, identity)
        if isinstance(result, Passed):
            scope["twofa"] = result.info
            await self.app(scope, receive, send)
            return
        await self._refuse(scope, receive, send, result.response, result.decision is not None)

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.core.start()
            elif message["type"] == "lifespan.shutdown":
                await self.core.close()
            return message

        return wrapped

    async def _request(self, scope: Scope, receive: Receive, path: str) -> Request | None:
        raw_headers = scope.get("headers") or []
        if not isinstance(raw_headers, list):
            raw_headers = list(raw_headers)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
        if len(headers) != len(raw_headers):  # a repeated header: join, as HTTP does
            headers = {}
            for k, v in raw_headers:
                name = k.decode("latin-1").lower()
                value = v.decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        client = scope.get("client")
        body = b""
        # Only our own POST endpoints read the body (they always answer themselves);
        # everything passed on to the app streams on untouched.
        if (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and self.core.is_endpoint(path)
        ):
            chunks = []
            size = 0
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY:
                    return None
                chunks.append(chunk)
                more = message.get("more_body", False)
            body = b"".join(chunks)
        return Request(
            method=scope.get("method", "GET") if scope["type"] == "http" else "GET",
            path=path,
            query_string=scope.get("query_string", b""),
            headers=headers,
            scheme=scope.get("scheme", "http"),
            client_ip=client[0] if client else None,
            body=body,
        )

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        response: Response,
        challenge: bool = False,
    ) -> None:
        if scope["type"] == "websocket":
            # Refused before accept: 1008 (policy violation) for a due challenge,
            # 1011/1013 for a failure on our side.
            message = await receive()
            if message["type"] == "websocket.connect":
                code = 1008 if challenge or response.status < 500 else 1013
                reason = "two_factor_required" if code == 1008 else "unavailable"
                await send({"type": "websocket.close", "code": code, "reason": reason})
            return
        await _send(send, response)


def _full_path(scope: Scope) -> str:
    root = scope.get("root_path", "")
    path: str = scope.get("path", "")
    if root and not path.startswith(root):
        path = root + path
    raw = scope.get("raw_path") or b""
    if b"%" in raw and any(sep in raw for sep in _ENCODED_SEPARATORS):
        # "/_2fa%2fchallenge" must not reach our endpoints or exemptions as if it
        # were "/_2fa/challenge": keep the encoded form so it matches nothing.
        path = raw.decode("latin-1")
    return path


async def _send(send: Send, response: Response) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
