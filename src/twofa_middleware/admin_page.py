"""The portal administrator's page: "Enforce 2-Factor Authentication" and its settings.

Mounted at ``{prefix}/admin`` when ``admin_page=True``. Only administrators of the
portal who hold a current second factor reach it. Saving validates, refuses a
change that would lock the saving administrator out, and writes through the
settings provider, which every process follows within a second.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import quote

from . import audit
from .errors import PolicyError
from .http import Request, Response
from .policy import (
    DEFAULT_IP_VERIFICATION_HOURS,
    DEFAULT_REAUTH_HOURS,
    Group,
    Method,
    PortalPolicy,
)

if TYPE_CHECKING:
    from .flow import TwoFactor, _Ctx

METHOD_LABELS = {
    Method.EMAIL: "Email code",
    Method.TOTP: "Authenticator app",
    Method.SMS: "SMS code",
}
GROUP_LABELS = {
    Group.CLIENT: "Clients",
    Group.WORKER: "Workers",
    Group.ADMINISTRATOR: "Administrators",
}


@runtime_checkable
class WritableSettings(Protocol):
    """A settings provider an administrator can write to (Redis, or the demo's memory)."""

    async def set_policy(
        self,
        portal: str,
        policy: PortalPolicy | Mapping[str, Any],
        *,
        actor: str | None = None,
        reason: str | None = None,
    ) -> None: ...


class AdminPage:
    def __init__(self, core: TwoFactor, settings: WritableSettings) -> None:
        self.core = core
        self.settings = settings

    async def _allowed(self, ctx: _Ctx) -> Response | None:
        """None when the user may administer this portal; else the answer to send."""
        if ctx.identity.group is not Group.ADMINISTRATOR:
            return self.core._error(
                ctx.request, 403, "forbidden", "Only administrators of this portal can do this."
            )
        if not await self.core._fresh(ctx):
            # Administration needs a current second factor, whatever the portal enforces.
            url = f"{self.core.prefix}/challenge?next={quote(self.core.prefix + '/admin')}"
            if ctx.request.wants_json:
                return Response.json(
                    401,
                    {"error": "two_factor_required", "reason": "admin", "challenge_url": url},
                )
            return Response.redirect(url)
        return None

    async def show(self, ctx: _Ctx) -> Response:
        refused = await self._allowed(ctx)
        if refused is not None:
            return refused
        if ctx.request.wants_json:
            return Response.json(200, {"portal": ctx.portal, "policy": ctx.policy.to_dict()})
        saved = any(k == "saved" for k, _ in ctx.request.query)
        return self._render(ctx, 200, ctx.policy.to_dict(), {}, saved=saved)

    async def save(self, ctx: _Ctx) -> Response:
        refused = await self._allowed(ctx)
        if refused is not None:
            return refused
        errors: dict[str, str] = {}
        if ctx.request.is_json_body:
            # The policy API takes real JSON types (lists, booleans, numbers), which the
            # flow's string-only form reader refuses; same-origin is checked the same way.
            if not self.core._csrf_ok(ctx, {}):
                return self.core._error(ctx.request, 403, "csrf_failed", "Cross-site request.")
            changes = _from_json(ctx.request)
            if changes is None:
                return self.core._error(
                    ctx.request, 400, "bad_request", "The body must be a JSON object of settings."
                )
            # JSON changes only the settings it names; the form always sends them all.
            data = {**ctx.policy.to_dict(), **changes}
        else:
            form = await self.core._form(ctx)
            if isinstance(form, Response):
                return form
            data, errors = _from_form(form)
        policy = None
        if not errors:
            try:
                policy = PortalPolicy.from_dict(data)
            except PolicyError as exc:
                errors[exc.field] = str(exc)
        if policy is not None and not errors:
            lockout = await self._locks_out(ctx, policy)
            if lockout:
                errors["methods"] = lockout
        if errors or policy is None:
            if ctx.request.wants_json:
                field, message = next(iter(errors.items()))
                return Response.json(
                    400, {"error": "invalid_policy", "field": field, "message": message}
                )
            shown = {**ctx.policy.to_dict(), **{k: v for k, v in data.items()}}
            return self._render(ctx, 400, shown, errors)
        await self.settings.set_policy(ctx.portal, policy, actor=ctx.identity.id)
        audit.emit(
            "admin_page_saved",
            portal=ctx.portal,
            user=ctx.identity.id,
            ip=ctx.ip,
        )
        if ctx.request.wants_json:
            return Response.json(200, {"portal": ctx.portal, "policy": policy.to_dict()})
        return Response.redirect(f"{self.core.prefix}/admin?saved=1")

    async def _locks_out(self, ctx: _Ctx, policy: PortalPolicy) -> str | None:
        """Why ``policy`` would leave this administrator unable to pass 2FA, if it would."""
        if not policy.enforce or not policy.applies_to(ctx.identity.group):
            return None
        usable = set()
        if ctx.identity.email:
            usable.add(Method.EMAIL)
        if ctx.identity.phone:
            usable.add(Method.SMS)
        subject = ctx.subject(self.core._portal_name(ctx.portal))
        if await self.core.totp.enrolled(subject):
            usable.add(Method.TOTP)
        if usable & policy.allowed_methods:
            return None
        allowed = ", ".join(METHOD_LABELS[m] for m in sorted(policy.allowed_methods))
        return (
            f"You could not sign in with these settings: you have none of the allowed "
            f"methods ({allowed}). Allow a method you have, or set up an authenticator app "
            "first."
        )

    def _render(
        self,
        ctx: _Ctx,
        status: int,
        values: Mapping[str, Any],
        errors: Mapping[str, str],
        *,
        saved: bool = False,
    ) -> Response:
        return self.core.pages.render(
            status,
            "admin.html",
            portal_name=self.core._portal_name(ctx.portal),
            prefix=self.core.prefix,
            csrf_token=self.core._csrf_token(ctx),
            values=values,
            errors=errors,
            saved=saved,
            methods=METHOD_LABELS,
            groups=GROUP_LABELS,
            default_reauth=_hours(DEFAULT_REAUTH_HOURS),
            default_ip=_hours(DEFAULT_IP_VERIFICATION_HOURS),
        )


def _hours(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _from_json(request: Request) -> dict[str, Any] | None:
    try:
        data = json.loads(request.body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _from_form(form: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The policy a submitted form describes, and per-field errors for what cannot be read.

    Checkboxes have distinct names (``method_email``, ``group_worker``) because the
    flow refuses repeated fields.
    """
    errors: dict[str, str] = {}
    data: dict[str, Any] = {
        "enforce": form.get("enforce") == "on",
        "methods": [m.value for m in Method if form.get(f"method_{m.value}") == "on"],
        "groups": [g.value for g in Group if form.get(f"group_{g.value}") == "on"],
        "ip_change_only": form.get("ip_change_only") == "on",
    }
    for name in ("reauth_hours", "ip_verification_hours"):
        raw = form.get(name, "").strip()
        if not raw:
            data[name] = None  # empty = never expires, as the help text says
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            errors[name] = "Enter a positive number of hours, or leave it empty for never."
            data[name] = raw
        else:
            data[name] = int(value) if value.is_integer() else value
    return data, errors
