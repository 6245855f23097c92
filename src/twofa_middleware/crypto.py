"""Keys derived from the one configured secret, and what they protect.

One secret (``TWOFA_SECRET_KEY``, at least 32 characters) yields independent
sub-keys, one per purpose, so that a signature for one purpose can never be
replayed as another and the code-hashing key is not the encryption key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import ConfigurationError, StoreError

MIN_SECRET_LENGTH = 32
_NONCE = 12


class Keyring:
    def __init__(self, secret_key: str | bytes) -> None:
        raw = secret_key.encode() if isinstance(secret_key, str) else secret_key
        if len(raw) < MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"secret_key (TWOFA_SECRET_KEY) must be at least {MIN_SECRET_LENGTH} characters "
                f"of random data, got {len(raw)}; generate one with "
                '`python -c "import secrets; print(secrets.token_urlsafe(48))"`'
            )
        self._root = raw
        self.signing_key = self.derive("itsdangerous-signing")
        self._code_key = self.derive("one-time-code-hmac")
        self._aead = AESGCM(self.derive("totp-seed-encryption"))

    def derive(self, purpose: str) -> bytes:
        return hmac.new(
            self._root, b"twofa-middleware:" + purpose.encode(), hashlib.sha256
        ).digest()

    def digest(self, *parts: str) -> bytes:
        """A keyed hash of ``parts`` (codes, device tokens): what the store keeps.

        The parts are length-prefixed so ("ab", "c") and ("a", "bc") differ.
        """
        mac = hmac.new(self._code_key, digestmod=hashlib.sha256)
        for part in parts:
            data = part.encode()
            mac.update(len(data).to_bytes(4, "big") + data)
        return mac.digest()

    def seal(self, plaintext: str, *, context: str) -> bytes:
        """Encrypt (AES-GCM) bound to ``context`` (portal and user): a seed copied to
        another user's record does not decrypt."""
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext.encode(), context.encode())

    def unseal(self, sealed: bytes, *, context: str) -> str:
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], context.encode()).decode()
        except (InvalidTag, ValueError) as exc:
            # Tampered data or a rotated key: treat as infrastructure failure, never as a pass.
            raise StoreError("a stored secret could not be decrypted") from exc
