"""Twelve-factor configuration: build the core from ``TWOFA_*`` environment variables.

| variable | meaning |
|---|---|
| TWOFA_SECRET_KEY | required, >= 32 random characters (signing, code hashing, encryption) |
| TWOFA_REDIS_URL | Redis for state, secrets, counters (and policies when no TWOFA_PORTALS*) |
| TWOFA_PORTALS / TWOFA_PORTALS_FILE | policies as JSON, or a .json/.toml file |
| TWOFA_SMTP_HOST, _PORT, _USERNAME, _PASSWORD, _FROM, _STARTTLS | email delivery |
| TWOFA_SMS_WEBHOOK_URL | SMS delivery by JSON webhook (else printed to the console) |
| TWOFA_TRUSTED_PROXIES | comma-separated proxy addresses/networks allowed to set X-Forwarded-For |
| TWOFA_PREFIX | where the endpoints are mounted (default /_2fa) |
| TWOFA_NEAR_CACHE | "0" turns off the in-process cache of verification state (default on) |

With TWOFA_REDIS_URL, audit events are also kept in a capped Redis stream per portal.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from . import audit
from .clientip import ClientIPResolver, parse_trusted_proxies
from .delivery.email import ConsoleEmailSender, SmtpEmailSender
from .delivery.sms import ConsoleSmsSender, WebhookSmsSender
from .errors import ConfigurationError
from .flow import TwoFactor
from .portals import single_portal
from .settings.base import SettingsProvider
from .settings.environment import PORTALS_FILE_VAR, PORTALS_VAR, EnvironmentSettings
from .settings.redis import RedisSettings
from .store.base import StateStore
from .store.cached import CachedStore
from .store.memory import MemoryStore
from .store.redis import RedisStore

log = logging.getLogger("twofa_middleware")


def core_from_env(
    environ: Mapping[str, str] | None = None,
    *,
    allow_memory_store: bool = False,
    console_codes: bool = False,
    **overrides: Any,
) -> TwoFactor:
    """A ``TwoFactor`` configured from the environment; keywords override any part.

    Without TWOFA_REDIS_URL the in-memory store is used only when
    ``allow_memory_store`` is true (the single-process demo); anywhere else that
    is a configuration error, since every worker would keep its own state.
    Without TWOFA_SMTP_HOST (TWOFA_SMS_WEBHOOK_URL) email (SMS) codes are off,
    unless ``console_codes`` is true (development): then they are printed on the
    console, which must never happen where real users sign in.
    """
    env = os.environ if environ is None else environ
    secret = overrides.pop("secret_key", None) or env.get("TWOFA_SECRET_KEY")
    if not secret:
        raise ConfigurationError(
            "TWOFA_SECRET_KEY is not set; set it to at least 32 random characters, e.g. "
            '`python -c "import secrets; print(secrets.token_urlsafe(48))"`'
        )
    redis_url = env.get("TWOFA_REDIS_URL") or None

    store: StateStore | None = overrides.pop("store", None)
    if store is None:
        if redis_url:
            store = RedisStore.from_url(redis_url)
            if _flag(env, "TWOFA_NEAR_CACHE", default=True):
                # The timestamps it keeps are compared with the core's clock.
                store = CachedStore(store, clock=overrides.get("clock", time.time))
        elif allow_memory_store:
            store = MemoryStore()
        else:
            raise ConfigurationError(
                "TWOFA_REDIS_URL is not set; set it to your Redis, e.g. redis://localhost:6379/0"
            )

    settings: SettingsProvider | None = overrides.pop("settings", None)
    if settings is None:
        if PORTALS_VAR in env or PORTALS_FILE_VAR in env or not redis_url:
            settings = EnvironmentSettings.from_env(env)
        else:
            settings = RedisSettings.from_url(redis_url)

    if "email_sender" not in overrides:
        if env.get("TWOFA_SMTP_HOST"):
            overrides["email_sender"] = SmtpEmailSender.from_env(env)
        elif console_codes:
            overrides["email_sender"] = ConsoleEmailSender()
        else:
            log.warning("email codes are off: TWOFA_SMTP_HOST is not set")
    if "sms_sender" not in overrides:
        url = env.get("TWOFA_SMS_WEBHOOK_URL")
        if url:
            overrides["sms_sender"] = WebhookSmsSender(url)
        elif console_codes:
            overrides["sms_sender"] = ConsoleSmsSender()
        else:
            log.warning("SMS codes are off: TWOFA_SMS_WEBHOOK_URL is not set")
    if "client_ip" not in overrides:
        proxies = env.get("TWOFA_TRUSTED_PROXIES", "")
        overrides["client_ip"] = ClientIPResolver(parse_trusted_proxies(proxies.split(",")))
    if "prefix" not in overrides and env.get("TWOFA_PREFIX"):
        overrides["prefix"] = env["TWOFA_PREFIX"]
    overrides.setdefault("portal_resolver", single_portal("default"))
    if redis_url:
        # Audit events also go to a capped stream per portal (`twofa audit tail`),
        # written from a background thread: the request path only queues them.
        audit.RedisAuditStream.shared(redis_url)
    return TwoFactor(settings=settings, store=store, secret_key=secret, **overrides)


def _flag(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be 1 or 0 (true/false), got {raw!r}")
