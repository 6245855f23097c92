"""Per-portal two-factor authentication in front of any Python web app."""

from __future__ import annotations

from .decision import Decision, Identity, Reason, VerificationState, decide
from .errors import ConfigurationError, DeliveryError, PolicyError, StoreError, TwoFactorError
from .policy import Group, Method, PortalPolicy

__all__ = [
    "ConfigurationError",
    "Decision",
    "DeliveryError",
    "Group",
    "Identity",
    "Method",
    "PolicyError",
    "PortalPolicy",
    "Reason",
    "StoreError",
    "TwoFactorError",
    "VerificationState",
    "decide",
]
