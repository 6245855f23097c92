"""SECURITY.md checklist items that had no test, driven in-process on a real Redis.

Each test names its checklist item. The core runs as in ``tests/support/core_harness``
(real redis-server, real SMTP server); time is an injected clock, never a sleep.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import email.utils
import inspect
import io
import json
import logging
import random
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

import pyotp
import pytest
from redis.asyncio import Redis
from starlette.types import Message, Receive, Scope, Send

from tests.support.clock import ManualClock
from tests.support.core_harness import SECRET, Browser, Outbox
from tests.support.sms_gateway import Gateway
from twofa_middleware.asgi import TwoFactorMiddleware
from twofa_middleware.crypto import Keyring
from twofa_middleware.decision import Identity
from twofa_middleware.delivery import ConsoleEmailSender, WebhookSmsSender
from twofa_middleware.errors import ConfigurationError
from twofa_middleware.flow import Passed, TwoFactor
from twofa_middleware.http import Request, Response
from twofa_middleware.methods import oob
from twofa_middleware.methods.base import Outcome, Subject
from twofa_middleware.methods.oob import OutOfBandCode
from twofa_middleware.policy import Group, Method, PortalPolicy
from twofa_middleware.portals import single_portal
from twofa_middleware.settings import StaticSettings
from twofa_middleware.store import MemoryStore, RedisStore

PORTAL = "acme"
# A TOTP step boundary (30 * 56_666_667); "now" sits mid-step so +-30 s is one step.
STEP_START = 1_700_000_010.0
ENFORCED = PortalPolicy(enforce=True)
ALICE = Identity("alice", Group.WORKER, email="alice@acme.test", phone="+15550100")
BOB = Identity("bob", Group.WORKER, email="bob@acme.test", phone="+15550101")
# No email or phone: may enroll an authenticator app right after login.
TINA = Identity("tina", Group.WORKER)
TOTP_VERIFY = "/_2fa/challenge/totp/verify"
EMAIL_SEND = "/_2fa/challenge/email/send"
EMAIL_VERIFY = "/_2fa/challenge/email/verify"


@dataclass
class Client(Browser):
    """A core_harness Browser that can also send extra headers and a query string."""

    extra_headers: dict[str, str] = field(default_factory=dict)
    query: str = ""

    def _request(self, method: str, path: str, body: dict[str, str] | None = None) -> Request:
        request = super()._request(method, path, body)
        return dataclasses.replace(
            request,
            headers={**request.headers, **self.extra_headers},
            query_string=self.query.encode(),
        )


CoreFactory = Callable[..., TwoFactor]


@pytest.fixture
def outbox() -> Iterator[Outbox]:
    box = Outbox()
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(STEP_START + 15)  # mid-step: +-30 s is one step either side


@pytest.fixture
async def make_core(
    redis_url: str, outbox: Outbox, clock: ManualClock
) -> AsyncIterator[CoreFactory]:
    """Cores on the test Redis and SMTP server, with static policies and ``clock``."""
    cores: list[TwoFactor] = []

    def make(policy: PortalPolicy = ENFORCED, **options: Any) -> TwoFactor:
        settings: dict[str, Any] = {
            "settings": StaticSettings({PORTAL: policy}),
            "store": RedisStore.from_url(redis_url),
            "secret_key": SECRET,
            "portal_resolver": single_portal(PORTAL),
            "email_sender": outbox.sender,
            "send_cooldown": 0.001,  # several codes in a row
            "max_failures": 20,  # room for the variant tables below (20 per 15 min)
            "clock": clock,
        }
        core = TwoFactor(**(settings | options))
        cores.append(core)
        return core

    yield make
    for core in cores:
        await core.close()


def body(response: Response) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.body)
    return data


def set_cookies(response: Response) -> list[str]:
    return [v for k, v in response.headers if k == "set-cookie"]


async def email_code(outbox: Outbox, to: str) -> str:
    received = await outbox.server.wait_for(to)
    text = received.message.get_body(preferencelist=("plain",))
    assert text is not None
    match = re.search(r"\b(\d{6})\b", text.get_content())
    assert match
    return match.group(1)


async def pass_email(client: Browser) -> str:
    """Send and verify an email code; the code used."""
    sent = await client.post(EMAIL_SEND, {})
    assert sent.status == 200, sent.body
    assert client.identity.email is not None
    code = await email_code(client.outbox, client.identity.email)
    verified = await client.post(EMAIL_VERIFY, {"code": code})
    assert verified.status == 200, verified.body
    return code


async def enroll_totp(client: Browser, clock: ManualClock) -> str:
    """Enroll and confirm an authenticator app at ``clock``; its base32 seed."""
    started = await client.post("/_2fa/enroll/totp", {})
    assert started.status == 200, started.body
    seed: str = body(started)["secret"]
    confirmed = await client.post("/_2fa/enroll/totp", {"code": pyotp.TOTP(seed).at(clock())})
    assert confirmed.status == 200, confirmed.body
    return seed


async def challenged(client: Browser) -> str | None:
    """The challenge reason when the gate stops ``client`` on ``/``; None when it passes."""
    result = await client.get("/")
    if isinstance(result, Passed):
        return None
    assert result.decision is not None
    return result.decision.reason.value


# --- 1-3: one-time codes ----------------------------------------------------------


def code_generator(digits: int = 6) -> tuple[OutOfBandCode, io.StringIO]:
    """The email method with the development sender: the codes land in the stream."""
    stream = io.StringIO()
    method = OutOfBandCode(
        Method.EMAIL,
        ConsoleEmailSender(stream),
        lambda i: i.email,
        MemoryStore(),
        Keyring(SECRET),
        digits=digits,
    )
    return method, stream


async def generate_codes(count: int, digits: int = 6) -> list[str]:
    method, stream = code_generator(digits)
    subject = Subject(PORTAL, "Acme", ALICE, ENFORCED, STEP_START)
    for _ in range(count):
        await method.send(subject)
    await method.drain()
    codes = re.findall(r"code for \S+: (\S+) \(email", stream.getvalue())
    assert len(codes) == count
    return codes


async def test_codes_still_vary_when_every_random_function_returns_a_constant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Item 1: the generator does not draw from ``random`` (module functions or a Random())."""
    constants: dict[str, Callable[..., Any]] = {
        "random": lambda: 0.5,
        "uniform": lambda a, b: a,
        "randint": lambda a, b: a,
        "randrange": lambda start, stop=None, step=1: start if stop is not None else 0,
        "choice": lambda seq: seq[0],
        "choices": lambda population, *a, k=1, **kw: [population[0]] * k,
        "sample": lambda population, k, **kw: list(population)[:k],
        "getrandbits": lambda k: 0,
        "randbytes": lambda n: b"\0" * n,
    }
    for name, constant in constants.items():
        monkeypatch.setattr(random, name, constant)
    # random.Random() instances too; SystemRandom (behind ``secrets``) overrides both.
    monkeypatch.setattr(random.Random, "random", lambda self: 0.5)
    monkeypatch.setattr(random.Random, "getrandbits", lambda self, k: 0)
    assert random.randint(0, 9) == random.randint(0, 9) == 0  # the patch is in force

    codes = await generate_codes(200)

    assert len(set(codes)) >= 195


def test_the_code_generator_module_imports_secrets_and_not_random() -> None:
    """Item 1, static check (bandit B311): no ``random`` import next to the generator."""
    tree = ast.parse(inspect.getsource(oob))
    imported = {
        alias.name.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import)
        for alias in n.names
    }
    imported |= {
        (n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
    }
    assert "secrets" in imported
    assert "random" not in imported


@pytest.mark.parametrize("digits", [6, 7, 8], ids=lambda d: f"{d}-digit-codes")
async def test_codes_have_exactly_the_configured_number_of_ascii_digits(digits: int) -> None:
    """Item 2: every code is ``digits`` ASCII digits (6 to 8)."""
    codes = await generate_codes(2_000, digits)
    assert all(re.fullmatch(rf"[0-9]{{{digits}}}", code) for code in codes)


@pytest.mark.parametrize(
    "digits",
    [pytest.param(5, id="five-digit-codes-are-refused"), pytest.param(9, id="nine-is-refused")],
)
def test_code_lengths_outside_six_to_eight_are_refused(digits: int) -> None:
    """Item 2 (4 digits is covered in test_flow_config): 6-8 is the allowed range."""
    with pytest.raises(ConfigurationError, match="code_digits"):
        TwoFactor(
            settings=StaticSettings({}),
            store=MemoryStore(),
            secret_key=SECRET,
            portal_resolver=single_portal(PORTAL),
            code_digits=digits,
        )


async def test_codes_are_uniform_over_the_whole_space_leading_zeros_included() -> None:
    """Item 3: about one code in ten starts with 0 (not randint(100000, 999999))."""
    codes = await generate_codes(20_000)
    first = [code[0] for code in codes]
    zero_share = first.count("0") / len(first)
    assert 0.07 <= zero_share <= 0.13, zero_share
    assert set(first) == set("0123456789")


# --- 5, 6, 20, 35: TOTP -------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "offset", "accepted"),
    [
        pytest.param(1, 0, True, id="window-1-accepts-the-current-step"),
        pytest.param(1, -30, True, id="window-1-accepts-a-code-from-30-s-ago"),
        pytest.param(1, +30, True, id="window-1-accepts-a-code-30-s-ahead"),
        pytest.param(1, -60, False, id="window-1-rejects-a-code-from-60-s-ago"),
        pytest.param(1, +60, False, id="window-1-rejects-a-code-60-s-ahead"),
        pytest.param(0, -30, False, id="window-0-rejects-a-code-from-30-s-ago"),
    ],
)
async def test_totp_accepts_at_most_one_step_either_side(
    make_core: CoreFactory,
    outbox: Outbox,
    clock: ManualClock,
    window: int,
    offset: int,
    accepted: bool,
) -> None:
    """Item 5: with window=1 a code from t-30 s passes and one from t-60 s does not."""
    core = make_core(totp_window=window)
    seed = await enroll_totp(Browser(core, outbox, identity=TINA), clock)
    clock.advance(3600)  # a later step than the enrollment's, which is used up

    new_browser = Browser(core, outbox, identity=TINA)
    response = await new_browser.post(TOTP_VERIFY, {"code": pyotp.TOTP(seed).at(clock() + offset)})

    assert response.status == (200 if accepted else 400), response.body
    assert bool(set_cookies(response)) is accepted
    assert (await challenged(new_browser) is None) is accepted


@pytest.mark.parametrize(
    "claim",
    [
        pytest.param("date", id="a-date-header"),
        pytest.param("x-client-time", id="an-x-client-time-header"),
        pytest.param("timestamp", id="a-timestamp-form-field"),
    ],
)
async def test_totp_is_checked_against_the_server_clock_whatever_time_the_client_claims(
    make_core: CoreFactory, outbox: Outbox, clock: ManualClock, claim: str
) -> None:
    """Item 6: a client-supplied time an hour in the past changes nothing."""
    core = make_core()
    seed = await enroll_totp(Browser(core, outbox, identity=TINA), clock)
    clock.advance(3600)
    claimed = clock() - 3600
    extra: dict[str, str] = {}
    field_: dict[str, str] = {}
    if claim == "date":
        extra["date"] = email.utils.formatdate(claimed, usegmt=True)
    elif claim == "x-client-time":
        extra["x-client-time"] = str(int(claimed))
    else:
        field_["timestamp"] = str(int(claimed))
    client = Client(core, outbox, identity=TINA, extra_headers=extra)
    totp = pyotp.TOTP(seed)

    at_claimed_time = await client.post(TOTP_VERIFY, {"code": totp.at(claimed), **field_})
    at_server_time = await client.post(TOTP_VERIFY, {"code": totp.at(clock()), **field_})

    assert at_claimed_time.status == 400, at_claimed_time.body
    assert at_server_time.status == 200, at_server_time.body


@pytest.mark.parametrize(
    ("variant", "replay_logged"),
    [
        pytest.param(lambda c: " " + c, True, id="leading-space"),
        pytest.param(lambda c: c + " ", True, id="trailing-space"),
        pytest.param(lambda c: "\t" + c + "\r\n", True, id="tabs-and-line-breaks"),
        pytest.param(lambda c: c[:3] + " " + c[3:], False, id="inner-space"),
        pytest.param(
            lambda c: c.translate({ord(d): 0xFF10 + int(d) for d in "0123456789"}),
            False,
            id="full-width-digits",
        ),
        pytest.param(lambda c: "", False, id="empty-code"),
    ],
)
async def test_variants_of_a_used_totp_code_are_rejected(
    make_core: CoreFactory,
    outbox: Outbox,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
    variant: Callable[[str], str],
    replay_logged: bool,
) -> None:
    """Items 20 and 35: the replay key is the matched step, not the submitted text."""
    core = make_core()
    seed = await enroll_totp(Browser(core, outbox, identity=TINA), clock)
    clock.advance(3600)
    code = pyotp.TOTP(seed).at(clock())
    first = await Browser(core, outbox, identity=TINA).post(TOTP_VERIFY, {"code": code})
    assert first.status == 200, first.body
    caplog.set_level(logging.INFO, logger="twofa_middleware.audit")

    other = Browser(core, outbox, identity=TINA)
    again = await other.post(TOTP_VERIFY, {"code": variant(code)})

    assert again.status == 400, again.body
    assert body(again)["error"] == "invalid_code"
    assert set_cookies(again) == []
    assert await challenged(other) == "new_device"
    replays = [
        r for r in caplog.records if getattr(r, "twofa", {}).get("event") == "totp_replay_rejected"
    ]
    assert bool(replays) is replay_logged


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(
            lambda c: c.translate({ord(d): 0xFF10 + int(d) for d in "0123456789"}),
            id="full-width-digits",
        ),
        pytest.param(
            lambda c: c.translate({ord(d): 0x0660 + int(d) for d in "0123456789"}),
            id="arabic-indic-digits",
        ),
        pytest.param(lambda c: "", id="empty-code"),
        pytest.param(lambda c: c + "0", id="seven-digits"),
        pytest.param(lambda c: c[:3] + " " + c[3:], id="inner-space"),
    ],
)
async def test_non_ascii_empty_or_misshapen_forms_of_an_unused_totp_code_are_refused_and_counted(
    make_core: CoreFactory, outbox: Outbox, clock: ManualClock, variant: Callable[[str], str]
) -> None:
    """Item 35: only exactly six ASCII digits count, even for a right, unused step
    (pyotp's own comparison NFKC-normalises, so full-width digits would match)."""
    core = make_core()
    seed = await enroll_totp(Browser(core, outbox, identity=TINA), clock)
    clock.advance(3600)
    code = pyotp.TOTP(seed).at(clock())
    client = Browser(core, outbox, identity=TINA)

    refused = await client.post(TOTP_VERIFY, {"code": variant(code)})

    assert refused.status == 400, refused.body
    assert body(refused)["attempts_left"] == core.max_failures - 1
    assert await challenged(client) == "new_device"
    # The step was not burned by the refused form: the plain code still works once.
    assert (await client.post(TOTP_VERIFY, {"code": code})).status == 200


# --- 28: a verifier that fails oddly --------------------------------------------------


async def _raise(subject: Subject, code: str) -> Outcome:
    raise RuntimeError("verifier exploded: SENSITIVE-INTERNAL-DETAIL")


def _returning(value: Any) -> Callable[[Subject, str], Any]:
    async def verify(subject: Subject, code: str) -> Any:
        return value

    return verify


@pytest.mark.parametrize(
    "verify",
    [
        pytest.param(_raise, id="a-verifier-that-raises"),
        pytest.param(_returning(None), id="a-verifier-returning-none"),
        pytest.param(_returning(False), id="a-verifier-returning-false"),
        pytest.param(_returning(""), id="a-verifier-returning-empty"),
    ],
)
async def test_only_an_explicit_success_from_the_verifier_changes_state(
    make_core: CoreFactory,
    outbox: Outbox,
    monkeypatch: pytest.MonkeyPatch,
    verify: Callable[[Subject, str], Any],
) -> None:
    """Item 28: an exception or a falsy answer is a refusal (4xx/5xx), never a pass,
    and records nothing."""
    core = make_core()
    client = Browser(core, outbox, identity=ALICE)
    assert (await client.post(EMAIL_SEND, {})).status == 200
    code = await email_code(outbox, "alice@acme.test")
    monkeypatch.setattr(core.senders["email"], "verify", verify)

    response = await client.post(EMAIL_VERIFY, {"code": code})

    assert response.status in (400, 500), response.body
    assert body(response)["error"] in ("invalid_code", "internal_error")
    assert b"Traceback" not in response.body
    assert b"SENSITIVE-INTERNAL-DETAIL" not in response.body
    assert set_cookies(response) == []
    assert await challenged(client) == "new_device"
    trust = await core.store.user_trust(PORTAL, ALICE.id)
    assert (trust.user_verified_at, trust.devices, trust.ips) == (None, {}, {})


# --- 31, 33, 98: through the ASGI adapter ---------------------------------------------


@dataclass
class AsgiResult:
    status: int
    body: bytes
    app_paths: list[str]

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class RecordingApp:
    """The protected app: answers 200 and remembers what reached it."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.paths.append(scope.get("root_path", "") + "|" + scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"from the app"})


async def asgi_get(
    middleware: TwoFactorMiddleware,
    app: RecordingApp,
    path: str,
    *,
    root_path: str = "",
    headers: dict[str, str] | None = None,
    query: str = "",
) -> AsgiResult:
    sent_headers = {"host": "acme.test", "accept": "application/json", **(headers or {})}
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": root_path,
        "query_string": query.encode(),
        "headers": [(k.encode(), v.encode()) for k, v in sent_headers.items()],
        "client": ("198.51.100.7", 50000),
        "server": ("acme.test", 80),
    }
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    before = len(app.paths)
    await middleware(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return AsgiResult(start["status"], content, app.paths[before:])


def alice_resolver(scope: Mapping[str, Any]) -> Identity:
    return ALICE


# Mounted at /portal: exemptions and the prefix are configured as full paths.
MOUNTED = {
    "exempt_paths": ["/portal/login", "/portal/static/", "/health"],
    "prefix": "/portal/_2fa",
}


@pytest.mark.parametrize(
    ("root_path", "path", "expected"),
    [
        pytest.param("/portal", "/login", "app", id="root-path-plus-path-matches-an-exemption"),
        pytest.param(
            "/portal", "/portal/login", "app", id="a-path-that-already-carries-the-root-path"
        ),
        pytest.param("/portal", "/static/app.css", "app", id="an-exempt-subtree-under-the-root"),
        pytest.param("/portal", "/_2fa/challenge", "endpoint", id="endpoints-match-with-the-root"),
        pytest.param("/portal", "/health", "gated", id="the-bare-path-alone-is-not-exempt"),
        pytest.param("", "/login", "gated", id="without-the-root-path-login-is-not-exempt"),
        pytest.param("/other", "/login", "gated", id="another-mount-is-not-exempt"),
        pytest.param("", "/_2fa/challenge", "gated", id="without-the-root-it-is-no-endpoint"),
        pytest.param("/portal", "/secret", "gated", id="a-protected-path-under-the-root"),
    ],
)
async def test_asgi_exemptions_and_endpoints_match_on_root_path_plus_path(
    make_core: CoreFactory, root_path: str, path: str, expected: str
) -> None:
    """Item 31: decisions use the full path (root_path + path)."""
    app = RecordingApp()
    middleware = TwoFactorMiddleware(app, core=make_core(**MOUNTED), identity=alice_resolver)

    result = await asgi_get(middleware, app, path, root_path=root_path)

    if expected == "app":
        assert (result.status, len(result.app_paths)) == (200, 1)
    elif expected == "endpoint":
        assert result.status == 200, result.body
        assert "methods" in result.json
        assert result.app_paths == []
    else:
        assert result.status == 401, result.body
        assert result.json["error"] == "two_factor_required"
        assert result.app_paths == []


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-original-url", "/login"),
        ("x-original-url", "/_2fa/challenge"),
        ("x-rewrite-url", "/login"),
        ("x-rewrite-url", "/static/app.css"),
        ("x-original-uri", "/login"),
        ("x-forwarded-uri", "/_2fa/challenge"),
        ("x-forwarded-path", "/login"),
        ("x-envoy-original-path", "/login"),
        ("x-forwarded-prefix", "/static"),
        ("x-forwarded-prefix", "/_2fa"),
        ("x-forwarded-prefix", "/login"),
        ("x-forwarded-host", "login"),
        ("x-forwarded-host", "localhost"),
        ("x-debug", "1"),
        ("x-2fa-bypass", "1"),
    ],
    ids=lambda v: v.replace("/", "_") if isinstance(v, str) else str(v),
)
async def test_rewrite_and_forwarding_headers_do_not_make_a_protected_path_exempt_or_an_endpoint(
    make_core: CoreFactory, header: str, value: str
) -> None:
    """Item 33: no client-controlled header turns /secret into /login, static or /_2fa."""
    app = RecordingApp()
    core = make_core(exempt_paths=["/login", "/static/"])
    middleware = TwoFactorMiddleware(app, core=core, identity=alice_resolver)

    result = await asgi_get(middleware, app, "/secret", headers={header: value})

    assert result.status == 401, result.body
    assert result.json["error"] == "two_factor_required"
    assert result.app_paths == []


@pytest.mark.parametrize(
    "query",
    ["debug=1", "2fa=0", "skip_2fa=true", "bypass=1&next=/login", "twofa=off"],
)
async def test_query_flags_do_not_bypass_the_gate(make_core: CoreFactory, query: str) -> None:
    """Item 33: no query flag skips the challenge."""
    app = RecordingApp()
    middleware = TwoFactorMiddleware(app, core=make_core(), identity=alice_resolver)

    result = await asgi_get(middleware, app, "/secret", query=query)

    assert (result.status, result.app_paths) == (401, [])


def _exploding_portal(request: Request) -> str | None:
    raise RuntimeError("portal lookup exploded: SENSITIVE-INTERNAL-DETAIL")


def _exploding_identity(scope: Mapping[str, Any]) -> Identity | None:
    raise RuntimeError("session store exploded: SENSITIVE-INTERNAL-DETAIL")


@pytest.mark.parametrize(
    ("broken", "path", "accept", "status"),
    [
        pytest.param("portal", "/secret", "application/json", 400, id="portal-resolver-json"),
        pytest.param("portal", "/secret", "text/html", 400, id="portal-resolver-html"),
        pytest.param(
            "portal", "/_2fa/challenge", "application/json", 400, id="portal-resolver-endpoint"
        ),
        pytest.param("identity", "/secret", "application/json", 500, id="identity-resolver"),
        pytest.param("identity", "/secret", "text/html", 500, id="identity-resolver-html"),
    ],
)
async def test_a_resolver_that_raises_gives_a_generic_error_and_never_reaches_the_app(
    make_core: CoreFactory,
    caplog: pytest.LogCaptureFixture,
    broken: str,
    path: str,
    accept: str,
    status: int,
) -> None:
    """Item 98: the failure is logged for the operator; the client sees no traceback."""
    app = RecordingApp()
    if broken == "portal":
        core = make_core(portal_resolver=_exploding_portal)
        middleware = TwoFactorMiddleware(app, core=core, identity=alice_resolver)
    else:
        middleware = TwoFactorMiddleware(app, core=make_core(), identity=_exploding_identity)

    result = await asgi_get(middleware, app, path, headers={"accept": accept})

    assert result.status == status, result.body
    assert result.app_paths == []
    for leak in (b"Traceback", b"SENSITIVE-INTERNAL-DETAIL", b"RuntimeError", b'File "'):
        assert leak not in result.body
    assert "SENSITIVE-INTERNAL-DETAIL" in caplog.text  # logged server-side


# --- 40, 55, 86: whose code, whose trust, which destination ----------------------------


@pytest.mark.parametrize("name", ["user", "username"])
@pytest.mark.parametrize("where", ["form-field", "query-parameter"])
async def test_a_user_field_in_the_verify_request_cannot_change_whose_code_is_checked(
    make_core: CoreFactory, outbox: Outbox, name: str, where: str
) -> None:
    """Item 40: the identity is the one the app authenticated, never a request field."""
    core = make_core()
    bob = Browser(core, outbox, identity=BOB, ip="203.0.113.20")
    assert (await bob.post(EMAIL_SEND, {})).status == 200
    bob_code = await email_code(outbox, "bob@acme.test")
    alice = Client(core, outbox, identity=ALICE)
    assert (await alice.post(EMAIL_SEND, {})).status == 200
    alice_code = await email_code(outbox, "alice@acme.test")
    extra = {name: "bob"} if where == "form-field" else {}
    alice.query = f"{name}=bob" if where == "query-parameter" else ""

    with_bobs_code = await alice.post(EMAIL_VERIFY, {"code": bob_code, **extra})
    with_her_code = await alice.post(EMAIL_VERIFY, {"code": alice_code, **extra})

    assert with_bobs_code.status == 400, with_bobs_code.body
    assert with_her_code.status == 200, with_her_code.body
    assert await challenged(bob) == "new_device"
    assert (await core.store.user_trust(PORTAL, BOB.id)).user_verified_at is None
    assert (await core.store.user_trust(PORTAL, ALICE.id)).user_verified_at is not None
    # Bob's code was never consumed on Alice's behalf: it still works for Bob.
    assert (await bob.post(EMAIL_VERIFY, {"code": bob_code})).status == 200


async def test_in_ip_mode_a_second_user_behind_the_same_nat_is_still_challenged(
    make_core: CoreFactory, outbox: Outbox
) -> None:
    """Item 55: IP trust is per user; an address another user verified counts for no one else."""
    core = make_core(PortalPolicy(enforce=True, ip_change_only=True))
    nat = "192.0.2.44"
    await pass_email(Browser(core, outbox, identity=ALICE, ip=nat))

    alice_elsewhere = Browser(core, outbox, identity=ALICE, ip=nat)  # no cookies: IP only
    bob = Browser(core, outbox, identity=BOB, ip=nat)

    assert await challenged(alice_elsewhere) is None
    assert await challenged(bob) == "new_ip"


HIJACK = {
    "email": "mallory@evil.test",
    "phone": "+15559999999",
    "to": "mallory@evil.test",
    "destination": "+15559999999",
    "method": "sms",
}


@pytest.mark.parametrize("where", ["form-fields", "query-parameters"])
@pytest.mark.parametrize("channel", ["email", "sms"])
async def test_destination_params_in_a_send_request_do_not_redirect_the_code(
    make_core: CoreFactory,
    outbox: Outbox,
    gateway: Gateway,
    channel: str,
    where: str,
) -> None:
    """Item 86: the code goes only to the profile's address, on the path's channel."""
    core = make_core(sms_sender=WebhookSmsSender(gateway.url))
    other = {"email": "sms", "sms": "email"}[channel]
    client = Client(core, outbox, identity=ALICE)
    fields: dict[str, str] = {}
    if where == "form-fields":
        fields = {k: v for k, v in HIJACK.items() if k != "method"} | {"method": other}
    else:
        client.query = "&".join(f"{k}={v}" for k, v in (HIJACK | {"method": other}).items())

    sent = await client.post(f"/_2fa/challenge/{channel}/send", fields)
    for sender in core.senders.values():
        await sender.drain()

    assert sent.status == 200, sent.body
    emails = [r.rcpt_tos for r in outbox.server.received]
    sms = [r.json["to"] for r in gateway.requests if r.json]
    if channel == "email":
        assert (emails, sms) == ([("alice@acme.test",)], [])
    else:
        assert (emails, sms) == ([], ["+15550100"])


# --- 68-70: no secrets at rest -----------------------------------------------------------


async def redis_contents(raw: Redis) -> list[bytes]:
    """Every key, and every value, field and member under it."""
    found: list[Any] = []
    async for key in raw.scan_iter(count=1000):
        found.append(key)
        kind = await raw.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            found.append(await raw.get(key))
        elif kind == "hash":
            for f, v in (await raw.hgetall(key)).items():
                found += [f, v]
        elif kind == "set":
            found += list(await raw.smembers(key))
        elif kind == "zset":
            found += list(await raw.zrange(key, 0, -1))
        elif kind == "list":
            found += list(await raw.lrange(key, 0, -1))
        elif kind == "stream":
            for _, fields in await raw.xrange(key) or []:
                for f, v in (fields or {}).items():
                    found += [f, v]
        else:
            raise AssertionError(f"key {key!r} of type {kind} is not scanned")
    assert all(isinstance(item, bytes) for item in found)  # a client without decoding
    return [bytes(item) for item in found]


def device_cookies(responses: list[Response]) -> list[str]:
    values = []
    for response in responses:
        for header in set_cookies(response):
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            values += [m.value for name, m in jar.items() if name.startswith("twofa_device_")]
    return values


async def test_redis_holds_no_totp_seed_no_plain_code_and_no_raw_device_token(
    make_core: CoreFactory, outbox: Outbox, clock: ManualClock, raw_redis: Redis
) -> None:
    """Items 68-70: after email codes, a TOTP enrollment and a TOTP sign-in, a scan of
    every Redis key and value finds the seed in no form, no plain email code, and
    neither a device cookie nor the token inside it (only its keyed hash)."""
    core = make_core()
    alice = Browser(core, outbox, identity=ALICE)
    responses: list[Response] = []

    email_codes = [await pass_email(alice)]
    # An email code that is sent but never used stays (hashed) in Redis.
    assert (await alice.post(EMAIL_SEND, {})).status == 200
    email_codes.append(await email_code(outbox, "alice@acme.test"))
    started = await alice.post("/_2fa/enroll/totp", {})
    seed: str = body(started)["secret"]
    confirmed = await alice.post("/_2fa/enroll/totp", {"code": pyotp.TOTP(seed).at(clock())})
    assert confirmed.status == 200, confirmed.body
    responses.append(confirmed)
    clock.advance(3600)
    signed_in = await Browser(core, outbox, identity=ALICE).post(
        TOTP_VERIFY, {"code": pyotp.TOTP(seed).at(clock())}
    )
    assert signed_in.status == 200, signed_in.body
    responses.append(signed_in)
    # (pass_email's own device cookie is in alice.cookies)
    cookies = [*device_cookies(responses), *alice.cookies.values()]
    tokens = [core.signer.loads(c, salt="twofa.device")[2] for c in cookies]

    contents = await redis_contents(raw_redis)
    blob = b"\n".join(contents)

    seed_bytes = base64.b32decode(seed)
    for needle in (seed.encode(), seed.lower().encode(), seed_bytes, seed_bytes.hex().encode()):
        assert needle not in blob
    assert base64.b64encode(seed_bytes) not in blob
    for code in email_codes:
        assert re.search(rb"(?<!\d)" + code.encode() + rb"(?!\d)", blob) is None, code
    for secret in [*cookies, *tokens]:
        assert secret.encode() not in blob
    # The scan is not blind: the devices' keyed hashes and the TOTP record are there.
    for token in tokens:
        assert core.device_id(PORTAL, ALICE.id, token).encode() in blob
    assert any(b"totp" in key for key in contents)


# --- 104: log injection -----------------------------------------------------------------


@pytest.mark.parametrize(
    "username",
    [
        pytest.param("mallory\nchallenge portal=acme user=admin reason=x", id="line-feed"),
        pytest.param("mallory\r\nverified portal=acme user=admin", id="cr-lf"),
        pytest.param("mallory\rverified portal=acme user=admin", id="carriage-return"),
        pytest.param("\x1b[2K\x1b[1Gmallory\x1b[31m", id="ansi-escapes"),
        pytest.param("mallory\x00\x07\x7f", id="nul-bell-del"),
    ],
)
async def test_a_username_with_line_breaks_or_ansi_escapes_gives_one_clean_audit_line(
    make_core: CoreFactory, outbox: Outbox, caplog: pytest.LogCaptureFixture, username: str
) -> None:
    """Item 104: one record, on one line, with no control characters left in it."""
    core = make_core()
    caplog.set_level(logging.INFO, logger="twofa_middleware.audit")
    client = Browser(core, outbox, identity=Identity(username, Group.WORKER))

    assert await challenged(client) == "new_device"

    records = [r for r in caplog.records if r.name == "twofa_middleware.audit"]
    assert len(records) == 1
    line = logging.Formatter("%(levelname)s %(name)s %(message)s").format(records[0])
    assert line.splitlines() == [line]
    assert not any(ord(c) < 32 or ord(c) == 127 for c in line)
    kept = "".join(c for c in username if ord(c) >= 32 and ord(c) != 127)
    assert getattr(records[0], "twofa")["user"] == kept  # noqa: B009 - set via extra=
    assert f" user={kept} " in line  # the name is kept, only its control characters go
