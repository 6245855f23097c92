"""Recovery codes: the fallback of anyone with an authenticator app.

Ten codes of 50 bits each, shown once, stored as keyed hashes, each usable once.
"""

from __future__ import annotations

import secrets

from ..crypto import Keyring
from ..store.base import StateStore
from .base import MethodStatus, Outcome, Subject

COUNT = 10
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read off paper easily
_LENGTH = 10  # 31**10 ~ 2**49.5


class RecoveryCodes:
    name = "recovery"

    def __init__(self, store: StateStore, keyring: Keyring) -> None:
        self.store = store
        self.keyring = keyring

    def _digest(self, subject: Subject, code: str) -> bytes:
        return self.keyring.digest("recovery", subject.portal, subject.user, code)

    @staticmethod
    def _clean(code: str) -> str | None:
        clean = code.strip().replace("-", "").replace(" ", "").lower()
        if len(clean) != _LENGTH or not clean.isascii() or any(c not in _ALPHABET for c in clean):
            return None
        return clean

    async def status(self, subject: Subject) -> MethodStatus | None:
        if await self.store.count_recovery_codes(subject.portal, subject.user) == 0:
            return None
        return MethodStatus(self.name, enrolled=True)

    async def regenerate(self, subject: Subject) -> list[str]:
        """New codes replace the old ones; the plain codes are returned to show once."""
        codes = ["".join(secrets.choice(_ALPHABET) for _ in range(_LENGTH)) for _ in range(COUNT)]
        await self.store.set_recovery_codes(
            subject.portal, subject.user, [self._digest(subject, c) for c in codes]
        )
        return [f"{c[:5]}-{c[5:]}" for c in codes]

    async def verify(self, subject: Subject, code: str) -> Outcome:
        clean = self._clean(code)
        if clean is None:
            return Outcome.WRONG
        # SREM-style removal: of concurrent uses of one code exactly one wins.
        ok = await self.store.consume_recovery_code(
            subject.portal, subject.user, self._digest(subject, clean)
        )
        return Outcome.OK if ok else Outcome.WRONG
