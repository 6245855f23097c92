"""WSGI entry point: PYTHONPATH=examples waitress-serve django_portal.wsgi:application"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.wsgi import get_wsgi_application

from django_portal.setup import configure
from twofa_middleware.integrations.django import close_all


def create_app(environ: Mapping[str, str] | None = None, **overrides: Any) -> Any:
    """The demo app; ``overrides`` override parts of the core (tests inject a clock)."""
    configure(environ, overrides)
    app = get_wsgi_application()
    app.close_twofa = close_all
    return app


application = create_app()
