"""Exceptions: misconfiguration and infrastructure failures.

A wrong code is a result, not an exception. Exceptions are for a deployment that
is set up wrongly (``ConfigurationError``) or a dependency that failed
(``StoreError``, ``DeliveryError``).
"""

from __future__ import annotations


class TwoFactorError(Exception):
    """Base class of every exception this package raises on purpose."""


class ConfigurationError(TwoFactorError, ValueError):
    """The deployment is configured wrongly; the message names the setting."""


class PolicyError(ConfigurationError):
    """A portal policy is invalid. ``field`` names the offending setting."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class StoreError(TwoFactorError):
    """The verification-state store (Redis) failed; callers fail closed."""


class DeliveryError(TwoFactorError):
    """A code could not be delivered (SMTP, SMS gateway)."""
