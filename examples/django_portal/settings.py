"""Django settings for the demo portal: no database (signed-cookie sessions, a
user backend over the demo's fixed user table)."""

from __future__ import annotations

from typing import Any

from demo_users import SESSION_COOKIE, core_options, demo_environ

ENV = demo_environ(None)
SECRET_KEY = ENV["TWOFA_SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = ["localhost", ".localhost", "127.0.0.1", "[::1]"]
ROOT_URLCONF = "django_portal.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "twofa_middleware.integrations.django.TwoFactorMiddleware",
]
# The demo contract posts plain forms to /login and /logout (as the other
# examples do), so Django's CsrfViewMiddleware is left out of this demo only.
AUTHENTICATION_BACKENDS = ["django_portal.users.DemoBackend"]
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
SESSION_COOKIE_NAME = SESSION_COOKIE
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = False  # the demo works over plain http on localhost
DATABASES: dict[str, Any] = {}
USE_TZ = True

TWOFA: dict[str, Any] = {
    "environ": ENV,
    "group": "django_portal.users.group_of",
    **core_options(ENV),
}
