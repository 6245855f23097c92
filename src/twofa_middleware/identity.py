"""Who the user is: resolved server-side from what the host app authenticated.

Never from a form field, query parameter or client cookie of ours. The default
reads Starlette's ``scope["user"]`` (set by AuthenticationMiddleware): a user
object with ``is_authenticated``, an id (``identity`` or ``username``) and
optionally ``group``, ``email``, ``phone`` and ``portal`` attributes.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .decision import Identity
from .errors import ConfigurationError
from .policy import Group

# Receives the adapter's native request context (an ASGI scope, a WSGI environ).
IdentityResolver = Callable[[Mapping[str, Any]], Identity | Awaitable[Identity | None] | None]


def identity_from_user(user: Any) -> Identity | None:
    """Build an Identity from a Starlette/Django-style user object."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    user_id = getattr(user, "identity", None) or getattr(user, "username", None)
    if not user_id:
        return None
    group = getattr(user, "group", None)
    if group is not None and not isinstance(group, Group):
        try:
            group = Group(str(group))
        except ValueError:
            raise ConfigurationError(
                f"user group {group!r} is not one of client, worker, administrator"
            ) from None
    return Identity(
        id=str(user_id),
        group=group,
        email=getattr(user, "email", None) or None,
        phone=getattr(user, "phone", None) or None,
        portal=getattr(user, "portal", None) or None,
    )


def scope_user(scope: Mapping[str, Any]) -> Identity | None:
    """The default resolver: Starlette's ``scope["user"]``."""
    return identity_from_user(scope.get("user"))


async def resolve_identity(
    resolver: IdentityResolver, context: Mapping[str, Any]
) -> Identity | None:
    result = resolver(context)
    if result is None or isinstance(result, Identity):  # the common, synchronous case
        return result
    if inspect.isawaitable(result):
        return await result
    return result
