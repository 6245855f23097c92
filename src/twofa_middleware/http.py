"""A framework-free request and response: what the flow reads and answers.

Adapters (ASGI, WSGI) translate to and from these; the flow never sees a scope
or an environ.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote

from .errors import TwoFactorError


class BadRequest(TwoFactorError):
    """The request is malformed (bad body, repeated parameter); answered 400."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # full path (root_path + path / SCRIPT_NAME + PATH_INFO), decoded
    query_string: bytes
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    scheme: str = "http"
    client_ip: str | None = None  # resolved by the adapter via ClientIPResolver
    body: bytes = b""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)

    @property
    def secure(self) -> bool:
        return self.scheme in ("https", "wss")

    @property
    def cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(self.header("cookie"))
        except Exception:  # noqa: BLE001 - a garbled cookie header is just "no cookies"
            return {}
        return {k: m.value for k, m in jar.items()}

    def cookie(self, name: str) -> str | None:
        """``cookies.get(name)`` without parsing every cookie (the gate's hot path).

        Same answer for well-formed headers; quoted or escaped values go through
        ``SimpleCookie``. On a malformed header it may still find ``name`` where
        ``SimpleCookie`` gives up: callers verify what they read (signed cookies).
        """
        header = self.headers.get("cookie")
        if not header or name not in header:
            return None
        if '"' in header or "\\" in header:
            return self.cookies.get(name)
        value = None
        for part in header.split(";"):
            if name not in part:  # most of a browser's cookies: skipped in C
                continue
            key, sep, raw = part.partition("=")
            if sep and key.strip() == name:
                value = raw.strip()  # the last one wins, as in SimpleCookie
        return value

    @property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query_string.decode("latin-1"), keep_blank_values=True)

    @property
    def wants_json(self) -> bool:
        """HTML only for clients that ask for it; everything else gets JSON."""
        accept = self.header("accept").lower()
        return "text/html" not in accept or "application/json" in accept.split(",")[0]

    @property
    def is_json_body(self) -> bool:
        return self.header("content-type").split(";")[0].strip().lower() == "application/json"

    def form(self) -> dict[str, str]:
        """The body as a flat dict of strings; repeated or non-string values are refused.

        One request is one guess: ``code=1&code=2`` or ``{"code": [...]}`` is a 400.
        """
        if not self.body:
            return {}
        if self.is_json_body:
            try:
                data: Any = json.loads(self.body)
            except ValueError:
                raise BadRequest("the JSON body could not be parsed") from None
            if not isinstance(data, dict):
                raise BadRequest("the JSON body must be an object")
            out: dict[str, str] = {}
            for k, v in data.items():
                if not isinstance(v, str):
                    raise BadRequest(f"field {k!r} must be a string")
                out[k] = v
            return out
        ctype = self.header("content-type").split(";")[0].strip().lower()
        if ctype not in ("application/x-www-form-urlencoded", ""):
            raise BadRequest("send the body as a form or as JSON")
        pairs = parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        form: dict[str, str] = {}
        for k, v in pairs:
            if k in form:
                raise BadRequest(f"field {k!r} was sent more than once")
            form[k] = v
        return form


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, status: int, data: Mapping[str, Any]) -> Response:
        return cls(
            status,
            json.dumps(data, separators=(",", ":")).encode(),
            [("content-type", "application/json")],
        )

    @classmethod
    def html(cls, status: int, text: str) -> Response:
        return cls(status, text.encode(), [("content-type", "text/html; charset=utf-8")])

    @classmethod
    def redirect(cls, location: str) -> Response:
        # A relative Location: never built from Host / X-Forwarded-Host.
        return cls(303, b"", [("location", quote(location, safe="/?&=%:;@!$'()*+,~-._"))])

    def set_header(self, name: str, value: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k != name]
        self.headers.append((name, value))
