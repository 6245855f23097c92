"""One-time codes sent out of band: email and SMS share this implementation."""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Callable
from typing import Protocol

from ..crypto import Keyring
from ..decision import Identity
from ..delivery.message import CodeMessage
from ..errors import ConfigurationError, DeliveryError
from ..policy import Method
from ..store.base import StateStore, StoredCode
from .base import MethodStatus, Outcome, Subject, normalise_digits

log = logging.getLogger("twofa_middleware.delivery")

MAX_CODE_TTL = 600.0  # NIST 800-63B 5.1.3.2 / ASVS 6.5.5: at most 10 minutes


class Sender(Protocol):
    """What delivers a code: an email or SMS sender from ``delivery``."""

    async def send(self, message: CodeMessage) -> None: ...


def check_code_settings(digits: int, ttl_seconds: float) -> None:
    """The floors no configuration may go below (SECURITY 2, 4)."""
    if not 6 <= digits <= 8:
        raise ConfigurationError(f"code_digits must be between 6 and 8, got {digits}")
    if not 0 < ttl_seconds <= MAX_CODE_TTL:
        raise ConfigurationError(
            f"code_ttl must be more than 0 and at most {MAX_CODE_TTL:.0f} seconds, "
            f"got {ttl_seconds}"
        )


class OutOfBandCode:
    """A code from ``secrets``, stored as a keyed hash, single use, expiring."""

    def __init__(
        self,
        method: Method,
        sender: Sender,
        destination: Callable[[Identity], str | None],
        store: StateStore,
        keyring: Keyring,
        *,
        digits: int = 6,
        ttl_seconds: float = 300.0,
    ) -> None:
        check_code_settings(digits, ttl_seconds)
        self.method = method
        self.name = method.value
        self.sender = sender
        self.destination = destination
        self.store = store
        self.keyring = keyring
        self.digits = digits
        self.ttl = ttl_seconds
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def purpose(self) -> str:
        return f"login:{self.name}"

    def _digest(self, subject: Subject, code: str) -> bytes:
        return self.keyring.digest("code", subject.portal, subject.user, self.purpose, code)

    async def status(self, subject: Subject) -> MethodStatus | None:
        if self.method not in subject.policy.allowed_methods:
            return None
        if not self.destination(subject.identity):
            return None
        return MethodStatus(self.name, enrolled=True)

    async def send(self, subject: Subject) -> None:
        to = self.destination(subject.identity)
        if not to:
            return
        # Uniform over the whole space, leading zeros included.
        code = f"{secrets.randbelow(10**self.digits):0{self.digits}d}"
        # Storing replaces the previous code: only the latest one is live.
        await self.store.put_code(
            subject.portal,
            subject.user,
            self.purpose,
            StoredCode(self._digest(subject, code), subject.now),
            self.ttl,
        )
        message = CodeMessage(
            code=code,
            portal_name=subject.portal_name,
            purpose="sign-in",
            expires_in_minutes=max(1, int(self.ttl // 60)),  # never overstate the lifetime
            to=to,
        )
        # Delivered off the request path, so the response time does not tell
        # whether the user has this destination or how slow the provider is.
        task = asyncio.create_task(self._deliver(message, subject))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, message: CodeMessage, subject: Subject) -> None:
        try:
            await self.sender.send(message)
        except DeliveryError:
            log.warning(
                "could not deliver %s code",
                self.name,
                extra={"portal": subject.portal, "user": subject.user, "method": self.name},
                exc_info=True,
            )

    async def drain(self) -> None:
        """Wait for deliveries in flight, then release the sender's connections."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        close = getattr(self.sender, "aclose", None)
        if close is not None:
            await close()

    async def verify(self, subject: Subject, code: str) -> Outcome:
        clean = normalise_digits(code, self.digits)
        stored = await self.store.get_code(subject.portal, subject.user, self.purpose)
        if clean is None or stored is None:
            return Outcome.WRONG
        # Expiry from the issue time stored server-side, not only the key's TTL.
        if not 0 <= subject.now - stored.issued_at <= self.ttl:
            return Outcome.WRONG
        digest = self._digest(subject, clean)
        if not hmac.compare_digest(stored.digest, digest):
            return Outcome.WRONG
        # Consume atomically: of concurrent right answers exactly one wins.
        if not await self.store.consume_code(subject.portal, subject.user, self.purpose, digest):
            return Outcome.WRONG
        return Outcome.OK
