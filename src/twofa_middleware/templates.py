"""HTML pages: Jinja2 templates shipped with the package, overridable by the host.

A host app overrides a page by putting a template of the same name in one of
``template_dirs``. Pages use no external assets; styles carry a per-response
CSP nonce.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2

from .http import Response

PAGE_HEADERS = (
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
)


class Pages:
    def __init__(self, template_dirs: Sequence[str | Path] = ()) -> None:
        loaders: list[jinja2.BaseLoader] = [jinja2.FileSystemLoader(list(template_dirs))]
        loaders.append(jinja2.PackageLoader("twofa_middleware", "templates"))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        # Fail at start-up, not on a user's request, if a template is broken.
        for name in (
            "challenge.html",
            "enroll_totp.html",
            "recovery.html",
            "message.html",
            "admin.html",
        ):
            self.env.get_template(name)

    def render(self, status: int, name: str, **context: Any) -> Response:
        nonce = secrets.token_urlsafe(16)
        text = self.env.get_template(name).render(nonce=nonce, **context)
        response = Response.html(status, text)
        response.headers.extend(PAGE_HEADERS)
        response.headers.append(
            (
                "content-security-policy",
                f"default-src 'none'; style-src 'nonce-{nonce}'; img-src data:; "
                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            )
        )
        return response
