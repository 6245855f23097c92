"""Verification state and secrets: the ``StateStore`` protocol and its two backends."""

from __future__ import annotations

from .base import CounterState, StateStore, StoredCode, TotpRecord, UserTrust
from .cached import CachedStore
from .memory import MemoryStore
from .redis import RedisStore

__all__ = [
    "CachedStore",
    "CounterState",
    "MemoryStore",
    "RedisStore",
    "StateStore",
    "StoredCode",
    "TotpRecord",
    "UserTrust",
]
