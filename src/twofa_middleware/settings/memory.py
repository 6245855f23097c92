"""Writable in-process settings: the single-process demo's admin page writes here.

Changes are seen by this process only, so it is no choice for several workers;
use ``RedisSettings`` there.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .. import audit
from ..policy import PortalPolicy
from .static import StaticSettings, check_portal_id, parse_policy


class MemorySettings(StaticSettings):
    async def set_policy(
        self,
        portal: str,
        policy: PortalPolicy | Mapping[str, Any],
        *,
        actor: str | None = None,
        reason: str | None = None,
    ) -> None:
        new = parse_policy(check_portal_id(portal), policy)
        before = self.policies.get(portal)
        self._policies = MappingProxyType({**self.policies, portal: new})
        audit.emit(
            "policy_set",
            portal=portal,
            user=actor,
            actor=actor,
            reason=reason,
            before=None if before is None else before.to_dict(),
            after=new.to_dict(),
        )
