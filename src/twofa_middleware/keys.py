"""Redis key names: the one place that builds them.

All keys of one user share the hash tag ``{portal:user}`` so that Redis Cluster
keeps them in one slot. Portal and user ids are escaped so that no id can
contain the tag's braces or collide with another (``a:b`` + ``c`` vs ``a`` + ``b:c``).
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "twofa"


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace(":", "%3A").replace("{", "%7B").replace("}", "%7D")


def user_tag(portal: str, user: str) -> str:
    return f"{_escape(portal)}:{_escape(user)}"


def ip_tag(portal: str, ip: str) -> str:
    return f"ip={_escape(portal)}:{_escape(ip)}"


def key(tag: str, name: str) -> str:
    return f"{PREFIX}:{{{tag}}}:{name}"


def user_key(portal: str, user: str, name: str) -> str:
    return key(user_tag(portal, user), name)


def _unescape(part: str) -> str:
    return part.replace("%7D", "}").replace("%7B", "{").replace("%3A", ":").replace("%25", "%")


def parse_user_tag(tag: str) -> tuple[str, str] | None:
    """(portal, user) back from ``user_tag``; None for anything else (an IP tag, garbage)."""
    portal, sep, user = tag.partition(":")
    if not sep or ":" in user or tag.startswith("ip="):
        return None
    return _unescape(portal), _unescape(user)


POLICIES_KEY: Final = f"{PREFIX}:policies"
POLICIES_CHANNEL: Final = f"{PREFIX}:policies:changed"
# Every change to a user's trust (record, revoke, delete) publishes the user's tag
# here, in the same atomic step as the write; "*" means "forget everyone".
TRUST_CHANNEL: Final = f"{PREFIX}:trust:changed"
# Portal-wide revocations: field = portal id, value = epoch seconds before which
# every stored verification of the portal counts as missing. Changes are announced
# on POLICIES_CHANNEL like policy changes (one cache holds both).
REVOCATIONS_KEY: Final = f"{PREFIX}:portal_revocations"


def audit_stream(portal: str) -> str:
    """The capped stream of one portal's audit events."""
    return f"{PREFIX}:audit:{_escape(portal)}"
