"""Second factors as plugins behind one small interface.

A method never persists a verification or counts attempts itself: the flow does
both, the same way for every method, so switching method cannot reset the
attempt budget. A method only answers "is this code right for this user now",
with a typed result; a wrong code is a result, not an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from ..decision import Identity
from ..policy import PortalPolicy


class Outcome(StrEnum):
    OK = "ok"
    WRONG = "wrong"  # wrong, expired, unknown or already-used code: one answer for all
    REPLAY = "replay"  # a TOTP step that was already used (logged on its own)


@dataclass(frozen=True, slots=True)
class Subject:
    """The user a method acts for, in the portal whose policy applies."""

    portal: str
    portal_name: str
    identity: Identity
    policy: PortalPolicy
    now: float

    @property
    def user(self) -> str:
        return self.identity.id

    @property
    def context(self) -> str:
        """What sealed secrets are bound to (AES-GCM associated data)."""
        return f"{self.portal}\x00{self.identity.id}"


@dataclass(frozen=True, slots=True)
class MethodStatus:
    name: str
    enrolled: bool  # usable now; False = may enroll now (authenticator app)


class SecondFactor(Protocol):
    name: str

    async def status(self, subject: Subject) -> MethodStatus | None:
        """How this method stands for the user; None when it is not offered."""
        ...

    async def verify(self, subject: Subject, code: str) -> Outcome: ...


class CodeSender(Protocol):
    """A method that sends a one-time code (email, SMS)."""

    name: str

    async def send(self, subject: Subject) -> None: ...


def normalise_digits(code: str, digits: int) -> str | None:
    """Exactly ``digits`` ASCII digits after trimming ASCII whitespace, else None."""
    code = code.strip(" \t\r\n")
    if len(code) != digits or not code.isascii() or not code.isdigit():
        return None
    return code
