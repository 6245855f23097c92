"""Policies fixed at start-up: a mapping given in code (or read once from the environment).

Everything is validated in ``__init__`` so that a typo stops the app from starting
instead of silently leaving a portal unprotected.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from ..errors import ConfigurationError, PolicyError
from ..policy import NOT_ENFORCED, PortalPolicy

# The entry that applies to every portal without a policy of its own.
DEFAULT_PORTAL: Final = "default"


def check_portal_id(portal: object) -> str:
    """Return ``portal`` if it is a usable portal id (a non-empty string)."""
    if not isinstance(portal, str) or not portal:
        raise ConfigurationError(f"a portal id must be a non-empty string, got {portal!r}")
    return portal


def parse_policy(portal: str, value: object) -> PortalPolicy:
    """One portal's policy from a ``PortalPolicy`` or a mapping of settings.

    The ``PolicyError`` is re-raised with the portal in its message: "reauth_hours
    must be positive" is useless to an operator with fifty portals configured.
    """
    if isinstance(value, PortalPolicy):
        return value
    try:
        return PortalPolicy.from_dict(value)  # type: ignore[arg-type]  # from_dict checks
    except PolicyError as exc:
        raise PolicyError(exc.field, f"portal {portal!r}: {exc}") from None


def parse_portals(
    portals: Mapping[str, PortalPolicy | Mapping[str, Any]],
) -> dict[str, PortalPolicy]:
    """Validate a whole ``portal id -> policy`` mapping; the first error wins."""
    if not isinstance(portals, Mapping):
        raise ConfigurationError(
            "portal policies must be an object mapping portal ids to policies, "
            f"got {type(portals).__name__}"
        )
    return {check_portal_id(p): parse_policy(p, v) for p, v in portals.items()}


def resolve(policies: Mapping[str, PortalPolicy], portal: str) -> PortalPolicy:
    """The portal's own policy, else ``default``, else not enforced."""
    found = policies.get(portal)
    if found is None:
        found = policies.get(DEFAULT_PORTAL, NOT_ENFORCED)
    return found


class StaticSettings:
    """A ``SettingsProvider`` over a fixed, validated mapping."""

    def __init__(self, policies: Mapping[str, PortalPolicy | Mapping[str, Any]]) -> None:
        self._policies: Mapping[str, PortalPolicy] = MappingProxyType(parse_portals(policies))

    @property
    def policies(self) -> Mapping[str, PortalPolicy]:
        """The configured policies (read-only), including ``default`` if present."""
        return self._policies

    async def get_policy(self, portal: str) -> PortalPolicy:
        return resolve(self._policies, check_portal_id(portal))

    async def start(self) -> None:
        """Nothing to connect: validation already happened in ``__init__``."""

    async def close(self) -> None:
        """Nothing to release."""
