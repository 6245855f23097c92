from __future__ import annotations

import pytest

from twofa_middleware.crypto import Keyring
from twofa_middleware.errors import ConfigurationError, StoreError

KEY = "k" * 40


def test_short_secret_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="TWOFA_SECRET_KEY"):
        Keyring("short")


def test_sealed_seed_round_trips_and_is_not_plaintext() -> None:
    k = Keyring(KEY)
    sealed = k.seal("JBSWY3DPEHPK3PXP", context="acme:alice")
    assert b"JBSWY3DPEHPK3PXP" not in sealed
    assert k.unseal(sealed, context="acme:alice") == "JBSWY3DPEHPK3PXP"


def test_sealed_seed_is_bound_to_its_user() -> None:
    k = Keyring(KEY)
    sealed = k.seal("JBSWY3DPEHPK3PXP", context="acme:alice")
    with pytest.raises(StoreError):
        k.unseal(sealed, context="acme:mallory")


def test_digest_is_keyed_and_unambiguous() -> None:
    a, b = Keyring(KEY), Keyring("z" * 40)
    assert a.digest("123456") != b.digest("123456")
    assert a.digest("ab", "c") != a.digest("a", "bc")
    assert a.digest("x") == a.digest("x")


def test_sub_keys_differ_per_purpose() -> None:
    k = Keyring(KEY)
    assert k.derive("a") != k.derive("b")
