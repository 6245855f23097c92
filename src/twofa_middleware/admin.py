"""Portal administration: the Python API under the ``twofa`` CLI and the admin page.

Host apps can build their own admin screens on the same functions::

    admin = PortalAdmin.from_url("redis://localhost:6379/0")
    await admin.set_portal("acme", actor="alice", methods=["totp"], reauth_hours=12)
    status = await admin.user_status("acme", "bob")
    await admin.close()

Policies live in Redis (``RedisSettings``): every change is validated through
``PortalPolicy`` (an error names the field), written with the invalidation that
makes every worker follow within a second, and audited with its before and
after. Every action takes ``actor`` (who does it) and ``reason`` (why), which go
into the audit event. Users are never named by a registry of ours: a user is
whatever id the host app's identity gives, and a user we never saw simply has
nothing enrolled and nothing trusted.

Revoking a portal ("everyone verifies again") stores a time per portal; every
verification recorded at or before it stops counting (``RedisSettings.revoke``
and ``settings.base.drop_revoked``). No list of the portal's users is needed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import redis.asyncio as aioredis

from . import audit
from .errors import ConfigurationError
from .flow import FAIL_COUNTER
from .keys import user_tag
from .policy import NOT_ENFORCED, PortalPolicy
from .settings.redis import RedisSettings
from .settings.static import DEFAULT_PORTAL, check_portal_id
from .store.base import StateStore
from .store.redis import RedisStore

__all__ = [
    "Lockout",
    "PolicyChange",
    "PortalAdmin",
    "PortalInfo",
    "TrustEntry",
    "UserStatus",
]

# How many characters of a device's digest identify it in listings.
DEVICE_ID_LENGTH = 12

PolicySource = Literal["own", "default", "none"]


@dataclass(frozen=True, slots=True)
class PortalInfo:
    """A portal's policy as it applies now, and where it comes from."""

    portal: str
    policy: PortalPolicy
    # "own": the portal's policy; "default": the ``default`` entry applies;
    # "none": nothing configured, 2FA not enforced.
    source: PolicySource
    revoked_before: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "portal": self.portal,
            "source": self.source,
            "policy": self.policy.to_dict(),
            "revoked_before": self.revoked_before,
        }


@dataclass(frozen=True, slots=True)
class PolicyChange:
    portal: str
    before: PortalPolicy | None  # the portal's own policy before; None if it had none
    after: PortalPolicy

    @property
    def changed(self) -> list[str]:
        before = None if self.before is None else self.before.to_dict()
        return sorted(
            k for k, v in self.after.to_dict().items() if before is None or before[k] != v
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "portal": self.portal,
            "before": None if self.before is None else self.before.to_dict(),
            "after": self.after.to_dict(),
            "changed": self.changed,
        }


@dataclass(frozen=True, slots=True)
class TrustEntry:
    """One verified device (by the start of its digest) or IP (canonical key)."""

    id: str
    verified_at: float
    # When it has to be verified again under the current policy; None = never.
    expires_at: float | None
    # False when expired or revoked: the next request from it is challenged.
    trusted: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "verified_at": self.verified_at,
            "expires_at": self.expires_at,
            "trusted": self.trusted,
        }


@dataclass(frozen=True, slots=True)
class Lockout:
    failures: int
    max_failures: int
    # The next attempt is refused (429) until the failure window ends.
    locked: bool
    resets_in: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "failures": self.failures,
            "max_failures": self.max_failures,
            "locked": self.locked,
            "resets_in": self.resets_in,
        }


@dataclass(frozen=True, slots=True)
class UserStatus:
    portal: str
    user: str
    totp_enrolled: bool
    recovery_codes_left: int
    last_verified_at: float | None
    revoked_before: float | None
    devices: list[TrustEntry] = field(default_factory=list)
    ips: list[TrustEntry] = field(default_factory=list)
    lockout: Lockout = field(default_factory=lambda: Lockout(0, 5, False, 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "portal": self.portal,
            "user": self.user,
            "enrolled": {
                "totp": self.totp_enrolled,
                "recovery_codes_left": self.recovery_codes_left,
            },
            "last_verified_at": self.last_verified_at,
            "revoked_before": self.revoked_before,
            "devices": [d.to_dict() for d in self.devices],
            "ips": [i.to_dict() for i in self.ips],
            "lockout": self.lockout.to_dict(),
        }


def check_user_id(user: object) -> str:
    if not isinstance(user, str) or not user:
        raise ConfigurationError(f"a user id must be a non-empty string, got {user!r}")
    return user


class PortalAdmin:
    """Administration of portals and their users, over Redis."""

    def __init__(
        self,
        settings: RedisSettings,
        store: StateStore,
        redis: aioredis.Redis,
        *,
        max_failures: int = 5,
        clock: Callable[[], float] = time.time,
        audit_stream: audit.RedisAuditStream | None = None,
    ) -> None:
        """``max_failures`` must match the core's (``TwoFactor(max_failures=...)``)."""
        self.settings = settings
        self.store = store
        self.redis = redis
        self.max_failures = max_failures
        self.clock = clock
        self.audit_stream = audit_stream
        self._owns_clients = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PortalAdmin:
        """Everything over one Redis URL; the audit events of the actions go to its stream."""
        settings = RedisSettings.from_url(url)
        store = RedisStore.from_url(url)
        client = aioredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        admin = cls(
            settings, store, client, audit_stream=audit.RedisAuditStream.shared(url), **options
        )
        admin._owns_clients = True
        return admin

    async def close(self) -> None:
        """Wait (briefly) for the audit events to be written; close what ``from_url`` opened."""
        await self._flush_audit(5.0)
        if self._owns_clients:
            self._owns_clients = False
            await self.settings.close()
            await self.store.close()
            await self.redis.aclose()

    async def _flush_audit(self, seconds: float) -> None:
        if self.audit_stream is not None:
            await asyncio.to_thread(self.audit_stream.flush, seconds)

    async def __aenter__(self) -> PortalAdmin:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- portals -----------------------------------------------------------------

    async def list_portals(self) -> list[PortalInfo]:
        """Every portal with a policy of its own (``default`` included), by name."""
        policies = await self.settings.list_policies()
        revocations = await self.settings.list_revocations()
        return [
            PortalInfo(name, policy, "own", revocations.get(name))
            for name, policy in sorted(policies.items())
        ]

    async def show_portal(self, portal: str) -> PortalInfo:
        """The policy that applies to ``portal`` now, and where it comes from."""
        check_portal_id(portal)
        policies = await self.settings.list_policies()
        revoked = (await self.settings.list_revocations()).get(portal)
        if portal in policies:
            return PortalInfo(portal, policies[portal], "own", revoked)
        if DEFAULT_PORTAL in policies:
            return PortalInfo(portal, policies[DEFAULT_PORTAL], "default", revoked)
        return PortalInfo(portal, NOT_ENFORCED, "none", revoked)

    async def enable_portal(
        self, portal: str, *, actor: str | None = None, reason: str | None = None
    ) -> PolicyChange:
        """Enforce 2FA on the portal (its other settings unchanged)."""
        return await self.set_portal(portal, actor=actor, reason=reason, enforce=True)

    async def disable_portal(
        self, portal: str, *, actor: str | None = None, reason: str | None = None
    ) -> PolicyChange:
        """Stop enforcing 2FA on the portal (its other settings are kept)."""
        return await self.set_portal(portal, actor=actor, reason=reason, enforce=False)

    async def set_portal(
        self,
        portal: str,
        *,
        actor: str | None = None,
        reason: str | None = None,
        **changes: Any,
    ) -> PolicyChange:
        """Change some settings of the portal's policy; the others stay as they are.

        Settings are ``PortalPolicy``'s (``enforce``, ``methods``, ``groups``,
        ``ip_change_only``, ``reauth_hours``, ``ip_verification_hours``), with its
        values: lists (empty = all) and hours (``None`` = never). A portal without
        a policy of its own starts from the one that applies to it now (the
        ``default`` entry, else not enforced). An invalid value raises a
        ``PolicyError`` naming the field, and nothing is written.
        """
        check_portal_id(portal)
        if not changes:
            raise ConfigurationError("nothing to change: give at least one setting")
        # Validate before touching Redis, so a typo fails fast whatever is stored.
        NOT_ENFORCED.replace(**changes)

        def apply(current: PortalPolicy) -> PortalPolicy:
            return current.replace(**changes)

        before, after = await self.settings.update_policy(portal, apply, actor=actor, reason=reason)
        return PolicyChange(portal, before, after)

    async def replace_portal(
        self,
        portal: str,
        policy: PortalPolicy | Mapping[str, Any],
        *,
        actor: str | None = None,
        reason: str | None = None,
    ) -> PortalPolicy:
        """Store a whole policy for the portal (validated first)."""
        await self.settings.set_policy(portal, policy, actor=actor, reason=reason)
        return (await self.show_portal(portal)).policy

    async def delete_portal(
        self, portal: str, *, actor: str | None = None, reason: str | None = None
    ) -> bool:
        """Remove the portal's own policy (it falls back to ``default``); True if it had one."""
        return await self.settings.delete_policy(portal, actor=actor, reason=reason)

    async def revoke_portal(
        self, portal: str, *, actor: str | None = None, reason: str | None = None
    ) -> float:
        """Everyone on the portal verifies again: every device, IP and verification
        recorded until now stops counting. Enrolled factors are kept. Returns the
        revocation time (epoch seconds).
        """
        return await self.settings.revoke(
            check_portal_id(portal), at=self.clock(), actor=actor, reason=reason
        )

    # --- users -------------------------------------------------------------------

    async def user_status(self, portal: str, user: str) -> UserStatus:
        """Enrolled factors, trusted devices and IPs with their times, and the lockout."""
        check_portal_id(portal)
        check_user_id(user)
        policy = await self.settings.get_policy(portal)
        revoked = await self.settings.get_revoked_before(portal)
        totp = await self.store.get_totp(portal, user)
        codes = await self.store.count_recovery_codes(portal, user)
        trust = await self.store.user_trust(portal, user)
        failures = await self.store.peek(user_tag(portal, user), FAIL_COUNTER)
        now = self.clock()

        def entries(found: Mapping[str, float], duration: float | None) -> list[TrustEntry]:
            out = []
            for key, at in sorted(found.items(), key=lambda kv: -kv[1]):
                expires = None if duration is None else at + duration
                trusted = (revoked is None or at > revoked) and (expires is None or now < expires)
                out.append(TrustEntry(key, at, expires, trusted))
            return out

        devices = entries(
            {d[:DEVICE_ID_LENGTH]: at for d, at in trust.devices.items()}, policy.reauth_seconds
        )
        locked = failures.count >= self.max_failures
        return UserStatus(
            portal=portal,
            user=user,
            totp_enrolled=totp is not None and totp.confirmed,
            recovery_codes_left=codes,
            last_verified_at=trust.user_verified_at,
            revoked_before=revoked,
            devices=devices,
            ips=entries(trust.ips, policy.ip_verification_seconds),
            lockout=Lockout(
                failures=failures.count,
                max_failures=self.max_failures,
                locked=locked,
                resets_in=failures.resets_in,
            ),
        )

    async def reset_user(
        self, portal: str, user: str, *, actor: str | None = None, reason: str | None = None
    ) -> None:
        """Helpdesk reset: remove the user's factors, recovery codes, trust and counters.

        The user enrolls again at the next sign-in (right after the password, as a
        new user would).
        """
        check_portal_id(portal)
        check_user_id(user)
        await self.store.delete_user(portal, user)
        audit.emit("user_reset", portal=portal, user=user, actor=actor, reason=reason)

    async def revoke_user(
        self, portal: str, user: str, *, actor: str | None = None, reason: str | None = None
    ) -> None:
        """Every device and IP of the user must verify again; factors are kept.

        For the host app's account events (password changed, "sign out everywhere",
        account recovered): trust earned before them stops counting at once, in
        every process.
        """
        check_portal_id(portal)
        check_user_id(user)
        await self.store.revoke_trust(portal, user)
        audit.emit("user_trust_revoked", portal=portal, user=user, actor=actor, reason=reason)

    async def unlock_user(
        self, portal: str, user: str, *, actor: str | None = None, reason: str | None = None
    ) -> bool:
        """Clear the user's failed attempts; True if the user was locked out."""
        check_portal_id(portal)
        check_user_id(user)
        tag = user_tag(portal, user)
        was = await self.store.peek(tag, FAIL_COUNTER)
        await self.store.reset(tag, FAIL_COUNTER)
        locked = was.count >= self.max_failures
        audit.emit(
            "user_unlocked",
            portal=portal,
            user=user,
            actor=actor,
            reason=reason,
            failures=was.count,
            was_locked=locked,
        )
        return locked

    # --- audit -------------------------------------------------------------------

    async def audit_tail(self, portal: str, count: int = 50) -> list[dict[str, Any]]:
        """The portal's last ``count`` audit events, oldest first."""
        check_portal_id(portal)
        # This process's own events (its actions so far) reach the stream first.
        await self._flush_audit(2.0)
        return await audit.read_stream(self.redis, portal, count)
