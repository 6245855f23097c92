"""Authenticator apps (RFC 6238 via pyotp): enrollment, and codes accepted once."""

from __future__ import annotations

import hmac

import pyotp

from ..crypto import Keyring
from ..errors import ConfigurationError
from ..policy import Method
from ..store.base import StateStore, StoredCode, TotpRecord
from .base import MethodStatus, Outcome, Subject, normalise_digits

STEP = 30
DIGITS = 6
ENROLL_TTL = 600.0  # an unconfirmed enrollment lives ten minutes
# The pending seed rides in the one-time-code slot of this purpose: it gets the
# same TTL, replacement and atomic single-use consumption as a code.
PENDING = "enroll:totp"


class Totp:
    name = Method.TOTP.value

    def __init__(
        self, store: StateStore, keyring: Keyring, *, issuer: str = "twofa", window: int = 1
    ) -> None:
        if window not in (0, 1):
            # RFC 6238 5.2: at most one step of network delay.
            raise ConfigurationError(f"totp_window must be 0 or 1, got {window}")
        self.store = store
        self.keyring = keyring
        self.issuer = issuer
        self.window = window

    async def enrolled(self, subject: Subject) -> bool:
        record = await self.store.get_totp(subject.portal, subject.user)
        return record is not None and record.confirmed

    async def status(self, subject: Subject) -> MethodStatus | None:
        if Method.TOTP not in subject.policy.allowed_methods:
            return None
        return MethodStatus(self.name, enrolled=await self.enrolled(subject))

    def _match(self, seed: str, code: str, now: float) -> int | None:
        """The time step ``code`` belongs to, within the window, or None."""
        if not seed:
            return None  # pyotp would happily compute codes for an empty seed
        totp = pyotp.TOTP(seed, digits=DIGITS, interval=STEP)
        current = int(now // STEP)
        matched = None
        # Compare every candidate so the time taken does not depend on which matched.
        for step in range(current - self.window, current + self.window + 1):
            if hmac.compare_digest(totp.generate_otp(step), code):
                matched = step
        return matched

    async def verify(self, subject: Subject, code: str) -> Outcome:
        clean = normalise_digits(code, DIGITS)
        record = await self.store.get_totp(subject.portal, subject.user)
        if clean is None or record is None or not record.confirmed:
            return Outcome.WRONG
        seed = self.keyring.unseal(record.sealed_seed, context=subject.context)
        step = self._match(seed, clean, subject.now)
        if step is None:
            return Outcome.WRONG
        # The replay key is the matched step, not the submitted text.
        if not await self.store.use_totp_step(subject.portal, subject.user, step):
            return Outcome.REPLAY
        return Outcome.OK

    async def start_enrollment(self, subject: Subject, account: str) -> tuple[str, str]:
        """A new 160-bit seed, kept pending; returns (secret, otpauth URI)."""
        seed = pyotp.random_base32()  # 32 base32 characters = 160 bits from `secrets`
        sealed = self.keyring.seal(seed, context=subject.context)
        await self.store.put_code(
            subject.portal, subject.user, PENDING, StoredCode(sealed, subject.now), ENROLL_TTL
        )
        uri = pyotp.TOTP(seed, digits=DIGITS, interval=STEP).provisioning_uri(
            name=account, issuer_name=f"{self.issuer} ({subject.portal_name})"
        )
        return seed, uri

    async def confirm_enrollment(self, subject: Subject, code: str) -> Outcome:
        """Activate the pending seed once a first code from it is right."""
        clean = normalise_digits(code, DIGITS)
        pending = await self.store.get_code(subject.portal, subject.user, PENDING)
        if clean is None or pending is None or subject.now - pending.issued_at > ENROLL_TTL:
            return Outcome.WRONG
        seed = self.keyring.unseal(pending.digest, context=subject.context)
        step = self._match(seed, clean, subject.now)
        if step is None:
            return Outcome.WRONG
        if not await self.store.consume_code(subject.portal, subject.user, PENDING, pending.digest):
            return Outcome.WRONG
        await self.store.set_totp(
            subject.portal, subject.user, TotpRecord(pending.digest, confirmed=True)
        )
        # The confirming code's step is used up: it cannot then sign in too.
        await self.store.use_totp_step(subject.portal, subject.user, step)
        return Outcome.OK
