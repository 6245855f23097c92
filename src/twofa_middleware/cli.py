"""``twofa``: administer portals and users from the command line.

    twofa portal list | show PORTAL | enable PORTAL | disable PORTAL | revoke PORTAL
    twofa portal set PORTAL [--methods email,totp] [--groups administrator,worker]
                            [--ip-change-only | --no-ip-change-only]
                            [--reauth-hours 12|never] [--ip-verification-hours 168|never]
    twofa user status|revoke|reset|unlock PORTAL USER
    twofa audit tail PORTAL [-n 50]

Redis comes from ``--redis-url`` or ``TWOFA_REDIS_URL``. Read commands take
``--json``. Every change is audited with ``--actor`` (default: ``cli:<login>``)
and an optional ``--reason``. Errors are one line on stderr; the exit code is 1
for a failed command and 2 for a command line that cannot be understood.
The commands are thin wrappers over ``twofa_middleware.admin.PortalAdmin``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO

from . import audit
from .admin import PolicyChange, PortalAdmin, PortalInfo, TrustEntry, UserStatus
from .errors import ConfigurationError, PolicyError, TwoFactorError
from .policy import PortalPolicy

PROG = "twofa"
URL_VAR = "TWOFA_REDIS_URL"
NEVER = ("never", "null", "none")
ALL = ("", "all")


class UsageError(Exception):
    """The command line cannot be understood (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line and no exit from inside parsing."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


Command = Callable[[PortalAdmin, argparse.Namespace, TextIO], Awaitable[None]]


# --- formatting --------------------------------------------------------------------


def _when(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    if not math.isfinite(at):
        return "always (invalid record)"
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    delta = now - at
    ago = _duration(abs(delta))
    return f"{stamp} ({ago} ago)" if delta >= 0 else f"{stamp} (in {ago})"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f}m"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _hours(value: float | None) -> str:
    return "never" if value is None else f"{value:g}h"


def _set(values: list[str]) -> str:
    return ", ".join(values) if values else "all"


def _policy_lines(policy: PortalPolicy) -> list[tuple[str, str]]:
    d = policy.to_dict()
    return [
        ("enforce", "yes" if d["enforce"] else "no"),
        ("methods", _set(d["methods"])),
        ("groups", _set(d["groups"])),
        ("ip_change_only", "yes" if d["ip_change_only"] else "no"),
        ("reauth_hours", _hours(d["reauth_hours"])),
        ("ip_verification_hours", _hours(d["ip_verification_hours"])),
    ]


def _setting(name: str, value: Any) -> str:
    if name in ("methods", "groups"):
        return _set(value)
    if name in ("reauth_hours", "ip_verification_hours"):
        return _hours(value)
    return "yes" if value else "no"


def _print_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _print_change(change: PolicyChange, args: argparse.Namespace, out: TextIO) -> None:
    if args.json:
        _print_json(change.to_dict(), out)
        return
    if not change.changed:
        out.write(f"{change.portal}: nothing changed\n")
        return
    before = None if change.before is None else change.before.to_dict()
    after = change.after.to_dict()
    for name in change.changed:
        old = "(no own policy)" if before is None else _setting(name, before[name])
        out.write(f"{change.portal}: {name}: {old} -> {_setting(name, after[name])}\n")


# --- commands ----------------------------------------------------------------------


async def portal_list(admin: PortalAdmin, args: argparse.Namespace, out: TextIO) -> None:
    portals = await admin.list_portals()
    if args.json:
        _print_json([p.to_dict() for p in portals], out)
        return
    if not portals:
        out.write("no portal has a policy (2FA is not enforced anywhere)\n")
        return
    header = ("PORTAL", "ENFORCE", "METHODS", "GROUPS", "IP-CHANGE-ONLY", "REAUTH", "IP-VERIFY")
    rows = [header] + [(p.portal, *(v for _, v in _policy_lines(p.policy))) for p in portals]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


async def portal_show(admin: PortalAdmin, args: argparse.Namespace, out: TextIO) -> None:
    info: PortalInfo = await admin.show_portal(args.portal)
    if args.json:
        _print_json(info.to_dict(), out)
        return
    source = {
        "own": "its own policy",
        "default": "the 'default' policy (no policy of its own)",
        "none": "no policy configured: 2FA not enforced",
    }[info.source]
    out.write(f"portal {info.portal}: {source}\n")
    for name, value in _policy_lines(info.policy):
        out.write(f"  {name + ':':<23} {value}\n")
    if info.revoked_before is not None:
        out.write(f"  {'revoked before:':<23} {_when(info.revoked_before, time.time())}\n")


async def portal_enable(admin: PortalAdmin, args: argparse.Namespace, out: TextIO) -> None:
    change = await admin.enable_portal(args.portal, actor=args.actor, reason=args.reason)
    _print_change(change, args, out)


async def portal_disable(admin: PortalAdmin, args: argparse.Namespace, out: TextIO) -> None:
    change = await admin.disable_portal(args.portal, actor=args.actor, reason=args.reason)
    _print_change(change, args, out)


def _list_option(name: str, raw: str) -> list[str]:
    if raw.strip().lower() in ALL:
        return []
    items = [part.strip() for part in raw.split(",")]
    if any(not item for item in items):
        raise PolicyError(
            name, f"{name} has an empty entry in {raw!r}; separate values with commas"
        )
    return items


def _hours_option(name: str, raw: str) -> float | None:
    if raw.strip().lower() in NEVER:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise PolicyError(
            name, f"{name} must be a positive number of hours or 'never', got {raw!r}"
        ) from None
    return value


async def portal_set(admin: PortalAdmin, args: argparse.Namespace, out: TextIO) -> None:
    changes: dict[str, Any] = {}
    if args.enforce is not None:
        changes["enforce"] = args.enforce
    if args.methods is not None:
        changes["methods"] = _list_option("methods", args.methods)
    if args.groups is not None:
        changes["groups"] = _list_option("groups", args.groups)
    if args.ip_change_only is not None:
        changes["ip_change_only"] = args.ip_change_only
    if args.reauth_hours is not None:
        changes["reauth_hours"] = _hours_option("reauth_hours", args.reauth_hours)
    if args.ip_verification_hours is not None:
        changes["ip_verification_hours"] = _hours_option(
            "ip_verification_hours", args.ip_verification_hours
        )
    if not changes:
        raise UsageError(
            "portal set: give at least one setting, e.g. --methods email,totp "
            f"(see '{PROG} portal set --help')"
        )
    change = await admin.set_portal(args.portal, actor=args.actor, reason=args.reason, **changes)
    _print_change(change, args, out)


async def portal_revoke(admin: PortalAdmin, args: argparse.Namespace, out: TextIO) -> None:
    at = await admin.revoke_portal(args.portal, actor=args.actor, reason=args.reason)
    if args.json:
        _print_json({"portal": args.portal, "revoked_before": at}, out)
        return
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    out.write(f"{args.portal}: every user verifies again (trust until {stamp} revoked)\n")


def _trust_lines(title: str, entries: list[TrustEntry], now: float, out: TextIO) -> None:
    out.write(f"  {title} ({len(entries)}):\n")
    for e in entries:
        state = "trusted" if e.trusted else "not trusted"
        until = (
            "no expiry"
            if e.expires_at is None
            else ("until " if e.trusted else "expired ") + _when(e.expires_at, now)
        )
        out.write(f"    {e.id:<20} {state:<12} verified {_when(e.verified_at, now)}, {until}\n")


async def user_status(admin: PortalAdmin, args: argparse.Namespace, out: TextIO) -> None:
    status: UserStatus = await admin.user_status(args.portal, args.user)
    if args.json:
        _print_json(status.to_dict(), out)
        return
    now = time.time()
    out.write(f"user {status.user} on portal {status.portal}\n")
    out.write(f"  authenticator app:   {'enrolled' if status.totp_enrolled else 'not enrolled'}\n")
    out.write(f"  recovery codes left: {status.recovery_codes_left}\n")
    out.write(f"  last verified:       {_when(status.last_verified_at, now)}\n")
    if status.revoked_before is not None:
        out.write(f"  portal revoked:      {_when(status.revoked_before, now)}\n")
    _trust_lines("devices", status.devices, now, out)
    _trust_lines("IPs", status.ips, now, out)
    lock = status.lockout
    if lock.locked:
        state = f"LOCKED OUT for {_duration(lock.resets_in)} (unlock: {PROG} user unlock)"
    else:
        state = "not locked"
    out.write(f"  lockout:             {state}; {lock.failures} of {lock.max_failures} failures\n")


async def user_reset(admin: PortalAdmin, args: argparse.Namespace, out: TextIO) -> None:
    await admin.reset_user(args.portal, args.user, actor=args.actor, reason=args.reason)
    if args.json:
        _print_json({"portal": args.portal, "user": args.user, "reset": True}, out)
        return
    out.write(
        f"{args.portal}: {args.user}: factors, recovery codes and trust removed; "
        "they enroll again at the next sign-in\n"
    )


async def user_revoke(admin: PortalAdmin, args: argparse.Namespace, out: TextIO) -> None:
    await admin.revoke_user(args.portal, args.user, actor=args.actor, reason=args.reason)
    if args.json:
        _print_json({"portal": args.portal, "user": args.user, "revoked": True}, out)
        return
    out.write(f"{args.portal}: {args.user}: every device and IP verifies again; factors kept\n")


async def user_unlock(admin: PortalAdmin, args: argparse.Namespace, out: TextIO) -> None:
    was_locked = await admin.unlock_user(
        args.portal, args.user, actor=args.actor, reason=args.reason
    )
    if args.json:
        _print_json({"portal": args.portal, "user": args.user, "was_locked": was_locked}, out)
        return
    what = "unlocked" if was_locked else "was not locked out; failed attempts cleared"
    out.write(f"{args.portal}: {args.user}: {what}\n")


_SKIP = ("event", "portal", "user", "at", "id")


async def audit_tail(admin: PortalAdmin, args: argparse.Namespace, out: TextIO) -> None:
    if args.n < 1:
        raise UsageError(f"-n must be at least 1, got {args.n}")
    events = await admin.audit_tail(args.portal, args.n)
    if args.json:
        _print_json(events, out)
        return
    for e in events:
        at = e.get("at")
        stamp = (
            datetime.fromtimestamp(float(at), UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            if isinstance(at, int | float)
            else "?"
        )
        extra = " ".join(f"{k}={audit._text(v)}" for k, v in sorted(e.items()) if k not in _SKIP)
        line = f"{stamp}  {e.get('event', '?'):<22} user={e.get('user', '')} {extra}"
        out.write(line.rstrip() + "\n")


# --- the command line --------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, *, read: bool, write: bool) -> None:
    parser.add_argument(
        "--redis-url",
        default=argparse.SUPPRESS,
        help=f"Redis holding the policies and state (default: ${URL_VAR})",
    )
    parser.add_argument(
        "--json", action="store_true", help="print JSON" if read else "print the result as JSON"
    )
    if write:
        parser.add_argument(
            "--actor",
            default=argparse.SUPPRESS,
            help="who makes the change, for the audit trail (default: cli:<login>)",
        )
        parser.add_argument("--reason", help="why, for the audit trail")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Administer twofa-middleware portals, users and audit events.",
    )
    parser.add_argument(
        "--redis-url",
        default=argparse.SUPPRESS,
        help=f"Redis holding the policies and state (default: ${URL_VAR})",
    )
    parser.add_argument(
        "--actor",
        default=argparse.SUPPRESS,
        help="who makes changes, for the audit trail (default: cli:<login>)",
    )
    groups = parser.add_subparsers(dest="group", metavar="{portal,user,audit}", required=True)

    portal = groups.add_parser("portal", help="portal policies")
    pcmds = portal.add_subparsers(dest="command", required=True)

    def leaf(
        sub: argparse._SubParsersAction[_Parser],
        name: str,
        func: Command,
        help_text: str,
        *,
        write: bool = False,
        user: bool = False,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != "list":
            p.add_argument("portal", metavar="PORTAL")
        if user:
            p.add_argument("user", metavar="USER")
        _common(p, read=not write, write=write)
        p.set_defaults(func=func)
        return p

    leaf(pcmds, "list", portal_list, "list the portals that have a policy")
    leaf(pcmds, "show", portal_show, "show the policy that applies to a portal")
    leaf(pcmds, "enable", portal_enable, "enforce 2FA on a portal", write=True)
    leaf(pcmds, "disable", portal_disable, "stop enforcing 2FA on a portal", write=True)
    setp = leaf(pcmds, "set", portal_set, "change settings of a portal's policy", write=True)
    setp.add_argument(
        "--enforce", action=argparse.BooleanOptionalAction, default=None, help="enforce 2FA"
    )
    setp.add_argument(
        "--methods",
        metavar="LIST",
        help="allowed methods, comma-separated: email,totp,sms ('' or 'all' = all)",
    )
    setp.add_argument(
        "--groups",
        metavar="LIST",
        help="groups that must use 2FA: client,worker,administrator ('' or 'all' = everyone)",
    )
    setp.add_argument(
        "--ip-change-only",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="challenge only from an IP not verified before",
    )
    setp.add_argument(
        "--reauth-hours", metavar="HOURS", help="hours until verifying again, or 'never'"
    )
    setp.add_argument(
        "--ip-verification-hours",
        metavar="HOURS",
        help="hours until a known IP must be verified again, or 'never'",
    )
    leaf(
        pcmds,
        "revoke",
        portal_revoke,
        "make every user of a portal verify again (enrollments are kept)",
        write=True,
    )

    users = groups.add_parser("user", help="one user of a portal")
    ucmds = users.add_subparsers(dest="command", required=True)
    leaf(
        ucmds,
        "status",
        user_status,
        "enrolled methods, trusted devices and IPs, lockout",
        user=True,
    )
    leaf(
        ucmds,
        "revoke",
        user_revoke,
        "every device and IP of the user verifies again (factors kept)",
        write=True,
        user=True,
    )
    leaf(
        ucmds,
        "reset",
        user_reset,
        "helpdesk reset: remove the user's factors and trust",
        write=True,
        user=True,
    )
    leaf(ucmds, "unlock", user_unlock, "clear the user's failed attempts", write=True, user=True)

    audits = groups.add_parser("audit", help="audit events")
    acmds = audits.add_subparsers(dest="command", required=True)
    tail = leaf(acmds, "tail", audit_tail, "the portal's latest audit events")
    tail.add_argument("-n", type=int, default=50, help="how many events (default 50)")
    return parser


def _default_actor() -> str:
    try:
        login = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (containers): still audit something
        login = "unknown"
    return f"cli:{login}"


async def _run(args: argparse.Namespace, url: str, out: TextIO) -> None:
    admin = PortalAdmin.from_url(url)
    try:
        await args.func(admin, args, out)
    finally:
        await admin.close()


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one command; returns the exit code (0 ok, 1 failed, 2 bad command line)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else 0
        url = getattr(args, "redis_url", None) or os.environ.get(URL_VAR)
        if not url:
            raise ConfigurationError(
                f"{URL_VAR} is not set; set it (or pass --redis-url) to the Redis of your "
                "deployment, e.g. redis://localhost:6379/0"
            )
        if not getattr(args, "actor", None):
            args.actor = _default_actor()
        if not hasattr(args, "reason"):
            args.reason = None
        asyncio.run(_run(args, url, out))
    except UsageError as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return 2
    except (TwoFactorError, ValueError) as exc:
        err.write(f"{PROG}: error: {_one_line(exc)}\n")
        return 1
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        err.write(f"{PROG}: error: unexpected {type(exc).__name__}: {_one_line(exc)}\n")
        return 1
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
