"""The demo users for Django: a fixed table, no database.

Django's session stores the user's primary key; here each (portal, username) pair
has a small integer id so Django's AuthenticationMiddleware can read it back.
"""

from __future__ import annotations

from typing import Any

from demo_users import GROUPS, PORTALS, DemoUser
from django.contrib.auth.backends import BaseBackend

USERS = {
    i: (portal, name)
    for i, (portal, name) in enumerate(((p, u) for p in PORTALS for u in GROUPS), start=1)
}
IDS = {v: k for k, v in USERS.items()}


class DjangoDemoUser(DemoUser):
    """What ``request.user`` is for a signed-in demo user."""

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_username(self) -> str:
        return self.username


class DemoBackend(BaseBackend):
    def get_user(self, user_id: Any) -> DjangoDemoUser | None:
        found = USERS.get(int(user_id))
        return None if found is None else DjangoDemoUser(found[1], found[0])


def group_of(user: Any) -> str | None:
    """TWOFA["group"]: the demo's users carry their group."""
    return getattr(user, "group", None)
