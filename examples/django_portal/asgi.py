"""ASGI entry point: uvicorn --app-dir examples django_portal.asgi:application"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.asgi import get_asgi_application

from django_portal.setup import configure
from twofa_middleware.integrations.django import close_all


def create_app(environ: Mapping[str, str] | None = None, **overrides: Any) -> Any:
    """The demo app; ``overrides`` override parts of the core (tests inject a clock)."""
    configure(environ, overrides)
    app = get_asgi_application()
    app.close_twofa = close_all  # Django ASGI has no lifespan: tests close explicitly
    return app


application = create_app()
