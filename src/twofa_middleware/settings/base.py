"""Where portal policies come from: one small async protocol."""

from __future__ import annotations

from typing import Protocol

from ..policy import PortalPolicy


class SettingsProvider(Protocol):
    async def get_policy(self, portal: str) -> PortalPolicy:
        """The portal's policy; a portal with no policy gets ``default`` or NOT_ENFORCED."""
        ...

    async def start(self) -> None:
        """Connect and validate; called when the app starts."""
        ...

    async def close(self) -> None: ...
