"""Configure Django for the demo, once per process; tests reconfigure TWOFA per app."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import django
from demo_users import core_options, demo_environ


def configure(environ: Mapping[str, str] | None, overrides: dict[str, Any]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_portal.settings")
    django.setup()
    if environ is None and not overrides:
        return  # the settings module already read the process environment
    from django.conf import settings

    env = demo_environ(environ)
    settings.SECRET_KEY = env["TWOFA_SECRET_KEY"]
    settings.TWOFA = {
        "environ": env,
        "group": "django_portal.users.group_of",
        **core_options(env, **overrides),
    }
