"""Policy providers: where each portal's 2FA policy comes from.

A portal without a policy of its own gets the ``default`` entry if there is one,
otherwise 2FA is not enforced for it.
"""

from __future__ import annotations

from .base import SettingsProvider
from .environment import EnvironmentSettings
from .redis import RedisSettings
from .static import DEFAULT_PORTAL, StaticSettings, parse_portals

__all__ = [
    "DEFAULT_PORTAL",
    "EnvironmentSettings",
    "RedisSettings",
    "SettingsProvider",
    "StaticSettings",
    "parse_portals",
]
