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


POLICIES_KEY: Final = f"{PREFIX}:policies"
POLICIES_CHANNEL: Final = f"{PREFIX}:policies:changed"
