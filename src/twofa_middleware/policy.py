"""Portal policy: the six settings an administrator tunes per portal.

A policy is an immutable value. ``PortalPolicy.from_dict`` is the only way in from
untrusted data and refuses anything it does not understand with a ``PolicyError``
that names the field and says what is allowed; it never falls back silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, TypeVar

from .errors import PolicyError

DEFAULT_REAUTH_HOURS: Final = 24.0
DEFAULT_IP_VERIFICATION_HOURS: Final = 720.0


class Method(StrEnum):
    """Second factors a policy can allow. Recovery codes are not a policy method."""

    EMAIL = "email"
    TOTP = "totp"
    SMS = "sms"


class Group(StrEnum):
    """The kinds of user a portal has."""

    CLIENT = "client"
    WORKER = "worker"
    ADMINISTRATOR = "administrator"


FIELDS: Final = (
    "enforce",
    "methods",
    "groups",
    "ip_change_only",
    "reauth_hours",
    "ip_verification_hours",
)


@dataclass(frozen=True, slots=True)
class PortalPolicy:
    """One portal's 2FA policy.

    ``methods`` and ``groups`` empty mean "all" (the admin selected none).
    ``reauth_hours`` / ``ip_verification_hours`` of ``None`` mean "never expires".
    """

    enforce: bool = False
    methods: frozenset[Method] = field(default_factory=frozenset)
    groups: frozenset[Group] = field(default_factory=frozenset)
    ip_change_only: bool = False
    reauth_hours: float | None = DEFAULT_REAUTH_HOURS
    ip_verification_hours: float | None = DEFAULT_IP_VERIFICATION_HOURS

    def __post_init__(self) -> None:
        # Validate even when built in code, so a bad value cannot slip past from_dict.
        _check_bool("enforce", self.enforce)
        _check_bool("ip_change_only", self.ip_change_only)
        _check_hours("reauth_hours", self.reauth_hours)
        _check_hours("ip_verification_hours", self.ip_verification_hours)
        object.__setattr__(self, "methods", frozenset(_members(Method, "methods", self.methods)))
        object.__setattr__(self, "groups", frozenset(_members(Group, "groups", self.groups)))

    @property
    def allowed_methods(self) -> frozenset[Method]:
        """The methods a user may use: none selected means all of them."""
        return self.methods or frozenset(Method)

    def applies_to(self, group: Group | None) -> bool:
        """Whether users of ``group`` must use 2FA (none selected means everyone)."""
        return not self.groups or group in self.groups

    @property
    def reauth_seconds(self) -> float | None:
        return None if self.reauth_hours is None else self.reauth_hours * 3600.0

    @property
    def ip_verification_seconds(self) -> float | None:
        h = self.ip_verification_hours
        return None if h is None else h * 3600.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PortalPolicy:
        if not isinstance(data, Mapping):
            raise PolicyError(
                "policy", f"a policy must be an object of settings, got {type(data).__name__}"
            )
        unknown = sorted(str(k) for k in data if k not in FIELDS)
        if unknown:
            raise PolicyError(
                unknown[0],
                f"unknown policy setting {unknown[0]!r}; allowed settings are " + ", ".join(FIELDS),
            )
        kwargs: dict[str, Any] = {}
        for name in FIELDS:
            if name in data:
                kwargs[name] = data[name]
        if "methods" in kwargs:
            kwargs["methods"] = _list_field("methods", kwargs["methods"])
        if "groups" in kwargs:
            kwargs["groups"] = _list_field("groups", kwargs["groups"])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "enforce": self.enforce,
            "methods": sorted(m.value for m in self.methods),
            "groups": sorted(g.value for g in self.groups),
            "ip_change_only": self.ip_change_only,
            "reauth_hours": self.reauth_hours,
            "ip_verification_hours": self.ip_verification_hours,
        }

    @classmethod
    def from_json(cls, text: str | bytes) -> PortalPolicy:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PolicyError("policy", f"policy is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def replace(self, **changes: Any) -> PortalPolicy:
        """A copy with ``changes`` applied, validated like ``from_dict``."""
        merged = self.to_dict()
        merged.update(changes)
        return PortalPolicy.from_dict(merged)


_E = TypeVar("_E", bound=StrEnum)


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise PolicyError(name, f"{name} must be true or false, got {value!r}")


def _check_hours(name: str, value: object) -> None:
    # bool is an int subclass: `true` hours is a typo, not a duration.
    ok = value is None or (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
    if not ok:
        raise PolicyError(name, f"{name} must be a positive number of hours or null, got {value!r}")


def _list_field(name: str, value: object) -> list[Any]:
    if not isinstance(value, list | tuple | set | frozenset):
        raise PolicyError(name, f"{name} must be a list (an empty list means all), got {value!r}")
    return list(value)


def _members(enum: type[_E], name: str, values: Iterable[object]) -> list[_E]:
    if isinstance(values, str):
        raise PolicyError(name, f"{name} must be a list, got {values!r}")
    allowed = ", ".join(e.value for e in enum)
    out: list[_E] = []
    for v in values:
        if not isinstance(v, str) or v not in enum._value2member_map_:
            raise PolicyError(
                name, f"{name} contains {v!r}; allowed values are {allowed} (empty means all)"
            )
        out.append(enum(v))
    return out


# What a portal with no configured policy gets: 2FA not enforced.
NOT_ENFORCED: Final = PortalPolicy()
