"""The gate and the challenge flow, free of any web framework.

``TwoFactor.process`` takes a framework-free ``Request`` and the identity the
adapter resolved, and answers either "pass" (with the decision, for the app) or
a ``Response`` to send instead. Adapters hold no policy logic: they translate
their world to a ``Request`` and a ``Response`` back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote

import segno
from itsdangerous import BadSignature, URLSafeTimedSerializer

from . import audit
from .admin_page import AdminPage, WritableSettings
from .clientip import ClientIPResolver
from .crypto import Keyring
from .decision import EMPTY_STATE, Decision, Identity, VerificationState, decide, needs_state
from .errors import ConfigurationError, StoreError
from .http import BadRequest, Request, Response
from .keys import ip_tag, user_tag
from .methods.base import MethodStatus, Outcome, SecondFactor, Subject
from .methods.oob import OutOfBandCode, Sender, check_code_settings
from .methods.recovery import RecoveryCodes
from .methods.totp import Totp
from .policy import Method, PortalPolicy
from .portals import PortalResolver
from .settings.base import RevocationSource, SettingsProvider, drop_revoked
from .store.base import StateStore
from .templates import Pages

log = logging.getLogger("twofa_middleware")

DAY: Final = 86400.0
# Trust records outlive the durations that use them, so an expiry reads as
# reauth_due / ip_expired rather than new_device / new_ip.
RETENTION_MARGIN: Final = DAY
# When a duration is "never", records are still dropped after this long unused.
MAX_RETENTION: Final = 400 * DAY
CSRF_MAX_AGE: Final = 3600
FAIL_COUNTER: Final = "fail"
# Verified device cookies remembered per process (about 300 bytes each).
_DEVICE_COOKIE_MEMO: Final = 10_000
_SEND_WAIT: Final = "Please wait before asking for another code."


@dataclass(frozen=True, slots=True)
class TwoFactorInfo:
    """What the app finds in ``scope["twofa"]`` (or the WSGI environ)."""

    portal: str | None
    decision: Decision | None
    identity: Identity | None


@dataclass(frozen=True, slots=True)
class Passed:
    info: TwoFactorInfo


@dataclass(frozen=True, slots=True)
class Respond:
    response: Response
    # Set for a challenge, so a WebSocket adapter can refuse with the right code.
    decision: Decision | None = None


Result = Passed | Respond
ANONYMOUS = TwoFactorInfo(None, None, None)


@dataclass(slots=True)
class _Ctx:
    """One request's resolved facts, for the endpoint handlers."""

    request: Request
    portal: str
    identity: Identity
    policy: PortalPolicy
    now: float
    ip: str | None
    device: str | None  # the id of the valid device cookie's token, as stored

    def subject(self, portal_name: str) -> Subject:
        return Subject(self.portal, portal_name, self.identity, self.policy, self.now)

    def audit(self, event: str, **fields: object) -> None:
        """An audit event about this request's user: who, from where, with what."""
        audit.emit(
            event,
            portal=self.portal,
            user=self.identity.id,
            ip=self.ip,
            user_agent=self.request.header("user-agent") or None,
            **fields,
        )


Handler = Callable[["TwoFactor", _Ctx], Awaitable[Response]]


def safe_next(value: str | None) -> str:
    """``next`` only as a same-site relative path; anything else becomes ``/``.

    Checked as given and once percent-decoded: ``/%5Cevil.test`` or ``/%0d%0a...``
    must not become an off-site or header-splitting target wherever it is decoded.
    """
    if not value or not all(_same_site_path(v) for v in (value, unquote(value))):
        return "/"
    return value


def _same_site_path(value: str) -> bool:
    return (
        value.startswith("/")
        and not value.startswith(("//", "/\\"))
        and "\\" not in value
        and not any(ord(c) < 32 or ord(c) == 127 for c in value)
    )


def retention_seconds(policy: PortalPolicy) -> float:
    reauth, ip = policy.reauth_seconds, policy.ip_verification_seconds
    if reauth is None or ip is None:
        return MAX_RETENTION
    return min(MAX_RETENTION, max(reauth, ip) + RETENTION_MARGIN)


def _check_limits(
    max_failures: int,
    failure_window: float,
    ip_max_failures: int,
    send_cooldown: float,
    max_sends_per_hour: int,
    ip_max_sends_per_hour: int,
) -> None:
    """Attempt and send limits within what NIST 800-63B 5.2.2 and ASVS 2.2.1 allow."""
    if not 1 <= max_failures <= 100:
        raise ConfigurationError(f"max_failures must be between 1 and 100, got {max_failures}")
    # At most 100 failed attempts per hour, however the window is cut.
    if not failure_window > 0 or max_failures * max(1.0, 3600 / failure_window) > 100:
        raise ConfigurationError(
            f"failure_window must be a positive number of seconds that allows at most 100 "
            f"failed attempts per hour ({max_failures} per {failure_window!r} s does not)"
        )
    if not 1 <= ip_max_failures <= 10_000:
        raise ConfigurationError(
            f"ip_max_failures must be between 1 and 10000, got {ip_max_failures}"
        )
    if not 0 < send_cooldown <= 600:
        raise ConfigurationError(
            f"send_cooldown must be more than 0 and at most 600 seconds, got {send_cooldown!r}"
        )
    if not 1 <= max_sends_per_hour <= 100:
        raise ConfigurationError(
            f"max_sends_per_hour must be between 1 and 100, got {max_sends_per_hour}"
        )
    if not 1 <= ip_max_sends_per_hour <= 10_000:
        raise ConfigurationError(
            f"ip_max_sends_per_hour must be between 1 and 10000, got {ip_max_sends_per_hour}"
        )


class TwoFactor:
    """The core every adapter drives. Everything computable once is done here."""

    def __init__(
        self,
        *,
        settings: SettingsProvider,
        store: StateStore,
        secret_key: str | bytes,
        portal_resolver: PortalResolver,
        email_sender: Sender | None = None,
        sms_sender: Sender | None = None,
        prefix: str = "/_2fa",
        exempt_paths: Iterable[str] = (),
        client_ip: ClientIPResolver | None = None,
        portal_names: Mapping[str, str] | None = None,
        template_dirs: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
        max_failures: int = 5,
        failure_window: float = 900.0,
        ip_max_failures: int = 50,
        send_cooldown: float = 30.0,
        max_sends_per_hour: int = 10,
        ip_max_sends_per_hour: int = 50,
        code_ttl: float = 300.0,
        code_digits: int = 6,
        totp_window: int = 1,
        issuer: str = "twofa",
        admin_page: bool = False,
    ) -> None:
        self.prefix = _check_prefix(prefix)
        self.settings = settings
        # Portal-wide revocation ("everyone verifies again"), where the provider has it.
        self._revocations = settings if isinstance(settings, RevocationSource) else None
        self.store = store
        self.keyring = Keyring(secret_key)
        self.resolve_portal = portal_resolver
        self.client_ip = client_ip or ClientIPResolver()
        self.portal_names = dict(portal_names or {})
        for portal, name in self.portal_names.items():
            # The name goes into email and SMS text: refuse what could break a message.
            if not name or any(ord(c) < 32 or ord(c) == 127 for c in name):
                raise ConfigurationError(
                    f"portal_names[{portal!r}] must be non-empty text without control "
                    f"characters, got {name!r}"
                )
        self.pages = Pages(list(template_dirs))
        self.clock = clock
        _check_limits(
            max_failures,
            failure_window,
            ip_max_failures,
            send_cooldown,
            max_sends_per_hour,
            ip_max_sends_per_hour,
        )
        # Checked here, not only by the senders: a bad value must stop the start even
        # before email or SMS is configured.
        check_code_settings(code_digits, code_ttl)
        self.max_failures = max_failures
        self.failure_window = failure_window
        self.ip_max_failures = ip_max_failures
        self.send_cooldown = send_cooldown
        self.max_sends_per_hour = max_sends_per_hour
        self.ip_max_sends_per_hour = ip_max_sends_per_hour
        self.signer = URLSafeTimedSerializer(self.keyring.signing_key)

        self.totp = Totp(store, self.keyring, issuer=issuer, window=totp_window)
        self.recovery = RecoveryCodes(store, self.keyring)
        self.senders: dict[str, OutOfBandCode] = {}
        if email_sender is not None:
            self.senders["email"] = OutOfBandCode(
                Method.EMAIL,
                email_sender,
                lambda i: i.email,
                store,
                self.keyring,
                digits=code_digits,
                ttl_seconds=code_ttl,
            )
        if sms_sender is not None:
            self.senders["sms"] = OutOfBandCode(
                Method.SMS,
                sms_sender,
                lambda i: i.phone,
                store,
                self.keyring,
                digits=code_digits,
                ttl_seconds=code_ttl,
            )
        self.methods: dict[str, SecondFactor] = {
            **self.senders,
            "totp": self.totp,
            "recovery": self.recovery,
        }

        p = self.prefix
        routes: dict[tuple[str, str], Handler] = {
            ("GET", f"{p}/challenge"): TwoFactor._challenge,
            ("GET", f"{p}/enroll/totp"): TwoFactor._enroll_page,
            ("POST", f"{p}/enroll/totp"): TwoFactor._enroll,
            ("GET", f"{p}/recovery"): TwoFactor._recovery_page,
            ("POST", f"{p}/recovery"): TwoFactor._recovery_regenerate,
        }
        for name in ("email", "sms"):
            routes[("POST", f"{p}/challenge/{name}/send")] = TwoFactor._send
        for name in ("email", "sms", "totp", "recovery"):
            routes[("POST", f"{p}/challenge/{name}/verify")] = TwoFactor._verify
        self.admin: AdminPage | None = None
        if admin_page:
            if not isinstance(settings, WritableSettings):
                raise ConfigurationError(
                    "admin_page needs a settings provider the page can write to: set "
                    "TWOFA_REDIS_URL and leave TWOFA_PORTALS unset (policies then live in Redis)"
                )
            self.admin = AdminPage(self, settings)
            routes[("GET", f"{p}/admin")] = TwoFactor._admin_show
            routes[("POST", f"{p}/admin")] = TwoFactor._admin_save
        self.routes = routes
        self.endpoint_paths = frozenset(path for _, path in routes)
        self._under_prefix = p + "/"
        exempt = tuple(exempt_paths)
        # "/static/" (trailing slash) exempts a subtree; anything else one exact path.
        self.exempt_exact = frozenset(p for p in exempt if not p.endswith("/"))
        self.exempt_prefixes = tuple(p for p in exempt if p.endswith("/"))
        self._started = False
        self._start_lock = asyncio.Lock()
        # raw device cookie -> (signed at, portal, user, device id); see _device.
        # The cookie name per portal, for plain and secure requests.
        self._cookie_names: tuple[dict[str, str], dict[str, str]] = ({}, {})
        self._device_cookies: dict[str, tuple[int, str, str, str]] = {}

    # --- lifecycle -------------------------------------------------------
    async def start(self) -> None:
        async with self._start_lock:
            if not self._started:
                await self.settings.start()
                # Optional in the StateStore protocol: the near-cache subscribes here.
                start_store = getattr(self.store, "start", None)
                if start_store is not None:
                    await start_store()
                self._started = True

    async def close(self) -> None:
        for sender in self.senders.values():
            await sender.drain()
        await self.settings.close()
        await self.store.close()
        self._started = False

    # --- the gate ----------------------------------------------------------
    def is_exempt(self, path: str) -> bool:
        if path in self.exempt_exact:
            return True
        # Prefix exemptions (static files) only for already-normalised paths, so
        # "/static/../admin" is not exempt.
        return (
            bool(self.exempt_prefixes)
            and path.startswith(self.exempt_prefixes)
            and (_is_normalised(path))
        )

    def is_endpoint(self, path: str) -> bool:
        """Whether ``path`` is ours (``{prefix}/...``): answered by the flow, body read."""
        return path in self.endpoint_paths or path.startswith(self._under_prefix)

    def unguarded(self, path: str, identity: Identity | None) -> TwoFactorInfo | None:
        """What the app gets for a request that passes on its path and identity alone
        (anonymous, or an exempt path); None when the gate or an endpoint must see it.

        Adapters ask this before translating the rest of the request, so those
        requests cost no header decoding, no ``Request`` and no trip to the core's
        loop; ``process`` asks it too, so the answer is the same either way.
        """
        if self.is_endpoint(path):
            return None
        if identity is None:
            return ANONYMOUS
        if self.is_exempt(path):
            return TwoFactorInfo(None, None, identity)
        return None

    async def process(self, request: Request, identity: Identity | None) -> Result:
        """Pass the request on, or answer it (challenge, endpoint, error)."""
        info = self.unguarded(request.path, identity)
        if info is not None:
            return Passed(info)
        return await self.guard(request, identity)

    async def guard(self, request: Request, identity: Identity | None) -> Result:
        """``process`` for a request that ``unguarded`` did not pass: adapters ask
        ``unguarded`` first, then build the ``Request`` and call this."""
        if not self._started:
            await self.start()
        if identity is None or self.is_endpoint(request.path):
            # (``unguarded`` passes every anonymous request that is not for an endpoint)
            return Respond(await self._endpoint(request, identity))
        try:
            return await self._gate(request, identity)
        except StoreError:
            return Respond(self._unavailable(request, identity))

    async def _gate(self, request: Request, identity: Identity) -> Result:
        # The hot path of every protected request: the same steps as _context and
        # _decide, without the per-request context object the endpoints need.
        portal = self._portal(request, identity)
        if isinstance(portal, Response):
            return Respond(portal)
        policy = await self.settings.get_policy(portal)
        if not needs_state(policy, identity):
            # The gate passes whatever the device and IP (not enforced, group exempt):
            # skip working them out.
            decision = decide(policy, identity, None, None, self.clock(), EMPTY_STATE)
            return Passed(TwoFactorInfo(portal, decision, identity))
        ip = self._ip(request)
        device = self._device(request, portal, identity.id, policy)
        state = await self._state(portal, identity.id, device, ip)
        decision = decide(policy, identity, device, ip, self.clock(), state)
        if decision.passed:
            return Passed(TwoFactorInfo(portal, decision, identity))
        audit.emit(
            "challenge",
            portal=portal,
            user=identity.id,
            reason=decision.reason,
            ip=ip,
            user_agent=request.header("user-agent") or None,
        )
        return Respond(self._challenge_response(request, decision), decision)

    def _portal(self, request: Request, identity: Identity) -> str | Response:
        """The request's portal, or the error to answer (unresolved, not the user's)."""
        try:
            portal = self.resolve_portal(request)
        except Exception:
            log.exception("portal resolver failed")
            portal = None
        if portal is None:
            return self._error(request, 400, "unknown_portal", "This site is not configured.")
        if identity.portal is not None and identity.portal != portal:
            return self._error(
                request, 403, "wrong_portal", "Your account does not belong to this portal."
            )
        return portal

    def _ip(self, request: Request) -> str | None:
        # X-Forwarded-For is read only when the peer is a configured trusted proxy
        # (ASGI servers such as uvicorn may already have applied it; WSGI ones do not).
        forwarded = request.header("x-forwarded-for")
        return self.client_ip.key(
            self.client_ip.resolve(request.client_ip, [forwarded] if forwarded else ())
        )

    async def _context(self, request: Request, identity: Identity) -> _Ctx | Response:
        portal = self._portal(request, identity)
        if isinstance(portal, Response):
            return portal
        policy = await self.settings.get_policy(portal)
        ip = self._ip(request)
        device = self._device(request, portal, identity.id, policy)
        return _Ctx(request, portal, identity, policy, self.clock(), ip, device)

    async def _state(
        self, portal: str, user: str, device: str | None, ip: str | None
    ) -> VerificationState:
        """The stored verification state, less what a portal-wide revocation voided."""
        state = await self.store.read_state(portal, user, device, ip)
        if self._revocations is not None:
            state = drop_revoked(state, await self._revocations.get_revoked_before(portal))
        return state

    async def _decide(self, ctx: _Ctx, policy: PortalPolicy | None = None) -> Decision:
        policy = policy or ctx.policy
        state = EMPTY_STATE
        if needs_state(policy, ctx.identity):
            state = await self._state(ctx.portal, ctx.identity.id, ctx.device, ctx.ip)
        return decide(policy, ctx.identity, ctx.device, ctx.ip, ctx.now, state)

    async def _fresh(self, ctx: _Ctx) -> bool:
        """Whether the user holds a current second factor, whatever the portal enforces."""
        strict = ctx.policy.replace(enforce=True, groups=[])
        return (await self._decide(ctx, strict)).passed

    def _challenge_response(self, request: Request, decision: Decision) -> Response:
        target = request.path + (
            "?" + request.query_string.decode("latin-1") if request.query_string else ""
        )
        url = f"{self.prefix}/challenge?next={quote(safe_next(target), safe='')}"
        if request.method in ("GET", "HEAD") and not request.wants_json:
            response = Response.redirect(url)
        else:
            response = Response.json(
                401,
                {
                    "error": "two_factor_required",
                    "reason": decision.reason.value,
                    "challenge_url": url,
                },
            )
        response.headers.append(("cache-control", "no-store"))
        return response

    # --- cookies and tokens ------------------------------------------------
    def _cookie_name(self, request: Request, portal: str) -> str:
        names = self._cookie_names[request.secure]
        name = names.get(portal)
        if name is None:
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in portal)
            name = f"twofa_device_{safe}"
            name = "__Host-" + name if request.secure else name
            if len(names) < _DEVICE_COOKIE_MEMO:  # portals are few; never unbounded
                names[portal] = name
        return name

    def device_id(self, portal: str, user: str, token: str) -> str:
        """What the store keeps for a device: a keyed hash of its token, 128 bits in hex
        (plenty against collisions and guessing; half the bytes of a full digest)."""
        return self.keyring.digest("device", portal, user, token)[:16].hex()

    def _device(self, request: Request, portal: str, user: str, policy: PortalPolicy) -> str | None:
        """The device id of a valid device cookie of this user and portal, else None."""
        raw = request.cookie(self._cookie_name(request, portal))
        if not raw:
            return None
        known = self._device_cookies.get(raw)
        if known is None:
            try:
                data, signed = self.signer.loads(
                    raw,
                    salt="twofa.device",
                    max_age=int(retention_seconds(policy)),
                    return_timestamp=True,
                )
            except BadSignature:
                return None
            # Bound to user and portal: a cookie of another user or portal is no device.
            if not (
                isinstance(data, list)
                and len(data) == 3
                and all(isinstance(part, str) for part in data)
            ):
                return None
            cookie_portal, cookie_user, token = data
            device = self.device_id(cookie_portal, cookie_user, token)
            known = (int(signed.timestamp()), cookie_portal, cookie_user, device)
            # Verified cookies are remembered (bounded) so the next request with the
            # same cookie skips the HMAC, base64 and JSON; its age is checked below
            # exactly as itsdangerous does.
            if len(self._device_cookies) >= _DEVICE_COOKIE_MEMO:
                del self._device_cookies[next(iter(self._device_cookies))]
            self._device_cookies[raw] = known
        else:
            # itsdangerous' own check (whole seconds, negative ages refused). Every
            # retention is at least RETENTION_MARGIN, so a younger cookie skips it.
            age = int(time.time()) - known[0]
            if age < 0 or (age > RETENTION_MARGIN and age > int(retention_seconds(policy))):
                return None
        if known[1] != portal or known[2] != user:
            return None
        return known[3]

    def _device_cookie(self, ctx: _Ctx, token: str) -> str:
        value = self.signer.dumps([ctx.portal, ctx.identity.id, token], salt="twofa.device")
        max_age = int(retention_seconds(ctx.policy))
        cookie = (
            f"{self._cookie_name(ctx.request, ctx.portal)}={value}; Max-Age={max_age}; "
            "Path=/; HttpOnly; SameSite=Lax"
        )
        return cookie + "; Secure" if ctx.request.secure else cookie

    def _csrf_token(self, ctx: _Ctx) -> str:
        return str(self.signer.dumps([ctx.portal, ctx.identity.id], salt="twofa.csrf"))

    def _csrf_ok(self, ctx: _Ctx, form: Mapping[str, str]) -> bool:
        request = ctx.request
        # Fetch metadata, computed by the browser: a post from another site, or from
        # a sibling subdomain (another portal), is refused whatever it carries.
        if request.header("sec-fetch-site") not in ("", "same-origin", "none"):
            return False
        if request.is_json_body:
            # JSON cannot be posted cross-site without a CORS preflight; still refuse a
            # foreign Origin outright. (Forms are not held to Origin: our pages send
            # no referrer, so browsers post them with "Origin: null"; the token counts.)
            origin = request.header("origin")
            host = request.header("host")
            return not origin or origin in (f"http://{host}", f"https://{host}")
        try:
            data = self.signer.loads(
                form.get("csrf_token", ""), salt="twofa.csrf", max_age=CSRF_MAX_AGE
            )
        except BadSignature:
            return False
        return bool(data == [ctx.portal, ctx.identity.id])

    # --- endpoints ---------------------------------------------------------
    async def _endpoint(self, request: Request, identity: Identity | None) -> Response:
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            if request.path in self.endpoint_paths:
                response = self._error(request, 405, "method_not_allowed", "Method not allowed.")
                response.headers.append(
                    ("allow", ", ".join(sorted(m for m, p in self.routes if p == request.path)))
                )
                return response
            return self._error(request, 404, "not_found", "Not found.")
        if identity is None:
            return self._error(request, 401, "not_authenticated", "Please sign in first.")
        try:
            ctx = await self._context(request, identity)
            if isinstance(ctx, Response):
                return ctx
            return await handler(self, ctx)
        except BadRequest as exc:
            return self._error(request, 400, "bad_request", str(exc))
        except StoreError:
            return self._unavailable(request, identity)
        except Exception:
            log.exception("2FA endpoint failed")
            return self._error(request, 500, "internal_error", "Something went wrong.")

    def _portal_name(self, portal: str) -> str:
        return self.portal_names.get(portal) or portal.replace("-", " ").title()

    async def _statuses(self, ctx: _Ctx) -> list[MethodStatus]:
        subject = ctx.subject(self._portal_name(ctx.portal))
        out = []
        for method in self.methods.values():
            status = await method.status(subject)
            if status is None:
                continue
            # An authenticator not enrolled yet is offered only to those who may enroll now.
            if status.enrolled or await self._enroll_allowed(ctx):
                out.append(status)
        return out

    async def _challenge(self, ctx: _Ctx) -> Response:
        decision = await self._decide(ctx)
        statuses = await self._statuses(ctx)
        nxt = safe_next(_query_one(ctx.request, "next"))
        if ctx.request.wants_json:
            return _no_store(
                Response.json(
                    200,
                    {
                        "reason": decision.reason.value,
                        "verified": decision.passed,
                        "methods": [{"name": s.name, "enrolled": s.enrolled} for s in statuses],
                        "next": nxt,
                    },
                )
            )
        return self.pages.render(
            200,
            "challenge.html",
            portal_name=self._portal_name(ctx.portal),
            prefix=self.prefix,
            reason=decision.reason.value,
            verified=decision.passed,
            methods=statuses,
            next=nxt,
            csrf_token=self._csrf_token(ctx),
            notice=_query_one(ctx.request, "sent"),
            error=None,
        )

    async def _form(self, ctx: _Ctx) -> dict[str, str] | Response:
        # One request is one guess: the code may not also ride in the query string.
        if any(k == "code" for k, _ in ctx.request.query):
            raise BadRequest("send the code in the body only")
        form = ctx.request.form()
        if not self._csrf_ok(ctx, form):
            message = (
                "This request came from another site (Origin or Sec-Fetch-Site)."
                if ctx.request.is_json_body
                else "The form expired or came from another site. Go back and retry."
            )
            return self._error(ctx.request, 403, "csrf_failed", message)
        return form

    def _method_from_path(self, ctx: _Ctx) -> str:
        return ctx.request.path[len(self.prefix) + len("/challenge/") :].split("/", 1)[0]

    async def _send(self, ctx: _Ctx) -> Response:
        form = await self._form(ctx)
        if isinstance(form, Response):
            return form
        name = self._method_from_path(ctx)
        sender = self.senders.get(name)
        subject = ctx.subject(self._portal_name(ctx.portal))
        if sender is None or await sender.status(subject) is None:
            return self._error(
                ctx.request, 403, "method_not_allowed", "This method is not available to you."
            )
        refused = await self._reserve_send(ctx, name)
        if refused is not None:
            return refused
        await sender.send(subject)
        ctx.audit("code_sent", method=name)
        nxt = safe_next(form.get("next"))
        if ctx.request.wants_json:
            return _no_store(
                Response.json(200, {"sent": True, "method": name, "expires_in": int(sender.ttl)})
            )
        return _no_store(
            Response.redirect(f"{self.prefix}/challenge?next={quote(nxt, safe='')}&sent={name}")
        )

    async def _reserve_send(self, ctx: _Ctx, method: str) -> Response | None:
        """Throttle sends per user (cooldown, hourly cap) and per client IP across users
        (one address asking codes for many accounts: SMS pumping, mail bombing)."""
        tag = user_tag(ctx.portal, ctx.identity.id)
        wait = await self.store.claim(tag, f"send:{method}", self.send_cooldown)
        if wait:
            return self._too_many(ctx.request, wait, _SEND_WAIT)
        for key, limit in (
            (tag, self.max_sends_per_hour),
            (None if ctx.ip is None else ip_tag(ctx.portal, ctx.ip), self.ip_max_sends_per_hour),
        ):
            if key is not None:
                hourly = await self.store.hit(key, "sends", 3600)
                if hourly.count > limit:
                    return self._too_many(ctx.request, hourly.resets_in, _SEND_WAIT)
        return None

    async def _reserve_attempt(self, ctx: _Ctx) -> Response | None:
        """Count the attempt BEFORE the code is looked at; refuse when over budget.

        Refused attempts look the same whether the code would have been right.
        """
        user = await self.store.hit(
            user_tag(ctx.portal, ctx.identity.id), FAIL_COUNTER, self.failure_window
        )
        by_ip = None
        if ctx.ip is not None:
            by_ip = await self.store.hit(
                ip_tag(ctx.portal, ctx.ip), FAIL_COUNTER, self.failure_window
            )
        over_user = user.count > self.max_failures
        over_ip = by_ip is not None and by_ip.count > self.ip_max_failures
        if not (over_user or over_ip):
            return None
        if user.count == self.max_failures + 1:
            ctx.audit("lockout")
        retry = max(
            user.resets_in if over_user else 0.0,
            by_ip.resets_in if over_ip and by_ip is not None else 0.0,
        )
        return self._too_many(ctx.request, retry, "Too many attempts. Try again later.")

    async def _verify(self, ctx: _Ctx) -> Response:
        form = await self._form(ctx)
        if isinstance(form, Response):
            return form
        name = self._method_from_path(ctx)
        method = self.methods.get(name)
        subject = ctx.subject(self._portal_name(ctx.portal))
        status = None if method is None else await method.status(subject)
        if method is None or status is None or not status.enrolled:
            return self._error(
                ctx.request, 403, "method_not_allowed", "This method is not available to you."
            )
        refused = await self._reserve_attempt(ctx)
        if refused is not None:
            return refused
        outcome = await method.verify(subject, form.get("code", ""))
        nxt = safe_next(form.get("next"))
        if outcome is not Outcome.OK:
            if outcome is Outcome.REPLAY:
                ctx.audit("totp_replay_rejected")
            ctx.audit("verification_failed", method=name, outcome=outcome)
            return await self._wrong_code(ctx, statuses=None, nxt=nxt)
        return await self._verified(ctx, name, nxt)

    async def _wrong_code(
        self, ctx: _Ctx, *, statuses: list[MethodStatus] | None, nxt: str
    ) -> Response:
        left = (
            self.max_failures
            - (await self.store.peek(user_tag(ctx.portal, ctx.identity.id), FAIL_COUNTER)).count
        )
        message = "That code is not valid."
        if ctx.request.wants_json:
            return _no_store(
                Response.json(
                    400,
                    {"error": "invalid_code", "message": message, "attempts_left": max(0, left)},
                )
            )
        decision = await self._decide(ctx)
        return self.pages.render(
            400,
            "challenge.html",
            portal_name=self._portal_name(ctx.portal),
            prefix=self.prefix,
            reason=decision.reason.value,
            verified=decision.passed,
            methods=statuses if statuses is not None else await self._statuses(ctx),
            next=nxt,
            csrf_token=self._csrf_token(ctx),
            notice=None,
            error=f"{message} Attempts left: {max(0, left)}.",
        )

    async def _verified(
        self, ctx: _Ctx, method: str, nxt: str, extra: Mapping[str, Any] | None = None
    ) -> Response:
        """Record the verification and hand the browser its device cookie."""
        await self.store.reset(user_tag(ctx.portal, ctx.identity.id), FAIL_COUNTER)
        # A new device token at every verification (192 bits), the old one dropped in
        # the same step: a copy of an earlier device cookie never gains trust again.
        token = secrets.token_urlsafe(24)
        device = self.device_id(ctx.portal, ctx.identity.id, token)
        await self.store.record_verification(
            ctx.portal,
            ctx.identity.id,
            device,
            ctx.ip,
            ctx.now,
            retention_seconds(ctx.policy),
            replaces=ctx.device,
        )
        # new_device: this browser held no valid device cookie (e.g. for a notice to the
        # user from an audit sink: "a new sign-in to your account").
        ctx.audit("verified", method=method, new_device=ctx.device is None)
        if extra is not None and not ctx.request.wants_json:
            response = self.pages.render(
                200,
                "recovery.html",
                portal_name=self._portal_name(ctx.portal),
                prefix=self.prefix,
                codes=extra["recovery_codes"],
                remaining=len(extra["recovery_codes"]),
                next=nxt,
                csrf_token=self._csrf_token(ctx),
            )
        elif ctx.request.wants_json:
            response = Response.json(200, {"verified": True, "next": nxt, **(extra or {})})
        else:
            response = Response.redirect(nxt)
        response.headers.append(("set-cookie", self._device_cookie(ctx, token)))
        response.headers.append(("vary", "Cookie"))
        return _no_store(response)

    async def _enroll_allowed(self, ctx: _Ctx) -> bool:
        """Whether the user may enroll an authenticator app now.

        With a current second factor, yes. Without one, only a user who has nothing
        to verify with yet (no authenticator, no email or phone the policy allows):
        otherwise a stolen password alone could enroll a factor and, since confirming
        an enrollment counts as a verification, skip the challenge (SECURITY 32, 79).
        """
        if Method.TOTP not in ctx.policy.allowed_methods:
            return False
        if await self._fresh(ctx):
            return True
        subject = ctx.subject(self._portal_name(ctx.portal))
        if await self.totp.enrolled(subject):
            return False
        for sender in self.senders.values():
            if await sender.status(subject) is not None:
                return False
        return True

    async def _enroll_page(self, ctx: _Ctx) -> Response:
        allowed = await self._enroll_allowed(ctx)
        nxt = safe_next(_query_one(ctx.request, "next"))
        if not allowed:
            if ctx.request.wants_json:
                return _no_store(Response.json(403, {"allowed": False}))
            return self._forbidden_enrollment(ctx.request)
        # Confirming a new enrollment replaces the current authenticator: say so.
        enrolled = await self.totp.enrolled(ctx.subject(self._portal_name(ctx.portal)))
        if ctx.request.wants_json:
            return _no_store(Response.json(200, {"allowed": True, "enrolled": enrolled}))
        return self._enroll_render(ctx, 200, nxt, enrolled=enrolled)

    def _enroll_render(
        self,
        ctx: _Ctx,
        status: int,
        nxt: str,
        *,
        enrolled: bool = False,
        secret: str | None = None,
        uri: str | None = None,
        error: str | None = None,
    ) -> Response:
        svg = None
        if uri is not None:
            svg = segno.make(uri, error="m").svg_inline(scale=5, dark="#111", light="#fff")
        return self.pages.render(
            status,
            "enroll_totp.html",
            portal_name=self._portal_name(ctx.portal),
            prefix=self.prefix,
            enrolled=enrolled,
            secret=secret,
            uri=uri,
            qr_svg=svg,
            next=nxt,
            csrf_token=self._csrf_token(ctx),
            error=error,
        )

    def _forbidden_enrollment(self, request: Request) -> Response:
        return self._error(
            request,
            403,
            "enrollment_not_allowed",
            "Verify with your current second factor before enrolling a new one.",
        )

    async def _enroll(self, ctx: _Ctx) -> Response:
        form = await self._form(ctx)
        if isinstance(form, Response):
            return form
        if not await self._enroll_allowed(ctx):
            return self._forbidden_enrollment(ctx.request)
        subject = ctx.subject(self._portal_name(ctx.portal))
        nxt = safe_next(form.get("next"))
        if "code" not in form:
            account = ctx.identity.email or ctx.identity.id
            secret, uri = await self.totp.start_enrollment(subject, account)
            ctx.audit("enrollment_started", method="totp")
            if ctx.request.wants_json:
                return _no_store(Response.json(200, {"secret": secret, "otpauth_uri": uri}))
            return self._enroll_render(ctx, 200, nxt, secret=secret, uri=uri)
        refused = await self._reserve_attempt(ctx)
        if refused is not None:
            return refused
        outcome = await self.totp.confirm_enrollment(subject, form["code"])
        if outcome is not Outcome.OK:
            ctx.audit("verification_failed", method="totp_enrollment", outcome="wrong")
            if ctx.request.wants_json:
                return await self._wrong_code(ctx, statuses=None, nxt=nxt)
            return self._enroll_render(ctx, 400, nxt, error="That code is not valid. Start again.")
        codes = await self.recovery.regenerate(subject)
        ctx.audit("enrolled", method="totp")
        # Confirming an enrollment counts as a verification.
        return await self._verified(ctx, "totp", nxt, {"recovery_codes": codes})

    async def _admin_show(self, ctx: _Ctx) -> Response:
        assert self.admin is not None  # routed only when the page is enabled
        return _no_store(await self.admin.show(ctx))

    async def _admin_save(self, ctx: _Ctx) -> Response:
        assert self.admin is not None
        return _no_store(await self.admin.save(ctx))

    async def _recovery_page(self, ctx: _Ctx) -> Response:
        if not await self._fresh(ctx):
            return self._forbidden_enrollment(ctx.request)
        count = await self.store.count_recovery_codes(ctx.portal, ctx.identity.id)
        if ctx.request.wants_json:
            return _no_store(Response.json(200, {"remaining": count}))
        return self.pages.render(
            200,
            "recovery.html",
            portal_name=self._portal_name(ctx.portal),
            prefix=self.prefix,
            codes=None,
            remaining=count,
            next="/",
            csrf_token=self._csrf_token(ctx),
        )

    async def _recovery_regenerate(self, ctx: _Ctx) -> Response:
        form = await self._form(ctx)
        if isinstance(form, Response):
            return form
        subject = ctx.subject(self._portal_name(ctx.portal))
        if not await self._fresh(ctx) or not await self.totp.enrolled(subject):
            return self._forbidden_enrollment(ctx.request)
        codes = await self.recovery.regenerate(subject)
        ctx.audit("recovery_codes_regenerated")
        if ctx.request.wants_json:
            return _no_store(Response.json(200, {"recovery_codes": codes}))
        return self.pages.render(
            200,
            "recovery.html",
            portal_name=self._portal_name(ctx.portal),
            prefix=self.prefix,
            codes=codes,
            remaining=len(codes),
            next=safe_next(form.get("next")),
            csrf_token=self._csrf_token(ctx),
        )

    # --- error answers -----------------------------------------------------
    def _error(self, request: Request, status: int, error: str, message: str) -> Response:
        if request.wants_json:
            return _no_store(Response.json(status, {"error": error, "message": message}))
        return self.pages.render(
            status, "message.html", title=message, message=message, prefix=self.prefix
        )

    def _too_many(self, request: Request, retry_after: float, message: str) -> Response:
        response = self._error(request, 429, "too_many_attempts", message)
        response.headers.append(("retry-after", str(max(1, math.ceil(retry_after)))))
        return response

    def _unavailable(self, request: Request, identity: Identity) -> Response:
        """Fail closed: Redis (or another store) cannot be reached."""
        log.warning("store unavailable: failing closed", exc_info=True)
        try:
            portal = self.resolve_portal(request) or ""
        except Exception:  # noqa: BLE001 - already logged where the gate resolved it
            portal = ""
        audit.emit("store_unavailable", portal=portal, user=identity.id, path=request.path)
        response = self._error(
            request,
            503,
            "unavailable",
            "Sign-in verification is temporarily unavailable. Please try again in a moment.",
        )
        response.headers.append(("retry-after", "5"))
        return response


def _no_store(response: Response) -> Response:
    response.set_header("cache-control", "no-store")
    return response


def _query_one(request: Request, name: str) -> str | None:
    values = [v for k, v in request.query if k == name]
    return values[0] if len(values) == 1 else None


def _is_normalised(path: str) -> bool:
    parts = path.split("/")
    return "//" not in path and ".." not in parts and "." not in parts and ";" not in path


def _check_prefix(prefix: str) -> str:
    if not prefix.startswith("/") or prefix.endswith("/") or not _is_normalised(prefix):
        raise ConfigurationError(
            f"prefix must be an absolute path without a trailing slash, like /_2fa; got {prefix!r}"
        )
    return prefix
