"""The gate's shortcuts answer exactly as the long way: cookie lookup, device-cookie memo."""

from __future__ import annotations

import random
import string
import time
from http.cookies import SimpleCookie

import pytest

from twofa_middleware.decision import Identity, Reason
from twofa_middleware.flow import RETENTION_MARGIN, Passed, Respond, TwoFactor, retention_seconds
from twofa_middleware.http import Request
from twofa_middleware.policy import PortalPolicy
from twofa_middleware.portals import single_portal
from twofa_middleware.settings import StaticSettings
from twofa_middleware.store import MemoryStore

P, U = "acme", "alice"
SECRET = "hot-path-test-secret-that-is-long-enough-012345"
POLICY = PortalPolicy(enforce=True, reauth_hours=None)  # only the cookie's age matters
DAY = 86_400.0


@pytest.mark.parametrize(
    "header",
    [
        "",
        "a=1",
        "a=1; b=2",
        "b=2;a=1",
        "  a = 1 ;b=2",
        "a=1; a=2",
        "ab=1; b=2",
        "xa=1",
        "a=",
        "a",
        "b=2; a",
        'a="quoted"; b=2',
        'a="esc\\"aped"',
        "a=x.y-z_0",
        "session=eyJ1c2VyIjoiYWxpY2UifQ==.Z.sig; a=WyJhIl0.ZZ.sig",
    ],
)
def test_one_cookie_is_read_as_simplecookie_reads_it(header: str) -> None:
    request = Request("GET", "/", b"", {"cookie": header} if header else {})
    jar: SimpleCookie = SimpleCookie()
    jar.load(header)
    expected = jar["a"].value if "a" in jar else None
    assert request.cookie("a") == expected
    assert request.cookie("a") == request.cookies.get("a")


def test_one_cookie_is_read_as_simplecookie_reads_it_in_random_headers() -> None:
    rng = random.Random(7)
    names = ["a", "b", "ab", "twofa_device_acme", "session", "a.b"]
    chars = string.ascii_letters + string.digits + "-_.=~!#$%&'*+^`|"
    for _ in range(2000):
        parts = []
        for _ in range(rng.randint(0, 4)):
            value = "".join(rng.choice(chars) for _ in range(rng.randint(0, 12)))
            space = rng.choice(["", " ", "  "])
            parts.append(f"{space}{rng.choice(names)}{rng.choice(['', ' '])}={value}")
        header = rng.choice([";", "; "]).join(parts)
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        request = Request("GET", "/", b"", {"cookie": header})
        for name in names:
            expected = jar[name].value if name in jar else None
            assert request.cookie(name) == expected, (header, name)


def test_retention_is_never_below_the_margin_the_memo_relies_on() -> None:
    for reauth in (None, 0.001, 1, 24, 720):
        for ip_hours in (None, 0.001, 1, 720):
            policy = PortalPolicy(reauth_hours=reauth, ip_verification_hours=ip_hours)
            assert int(retention_seconds(policy)) >= RETENTION_MARGIN


class Counting:
    """Wraps the core's signer to count the cookies it really verifies."""

    def __init__(self, core: TwoFactor) -> None:
        self.loads = 0
        real = core.signer.loads

        def loads(*args: object, **kwargs: object) -> object:
            self.loads += 1
            return real(*args, **kwargs)  # type: ignore[arg-type]

        core.signer.loads = loads  # type: ignore[method-assign]


def core() -> TwoFactor:
    return TwoFactor(
        settings=StaticSettings({P: POLICY}),
        store=MemoryStore(),
        secret_key=SECRET,
        portal_resolver=single_portal(P),
    )


def request_with(cookie: str) -> Request:
    return Request(
        "GET", "/", b"", {"cookie": f"twofa_device_{P}={cookie}", "accept": "application/json"}
    )


async def reason(gate: TwoFactor, cookie: str, user: str = U) -> Reason:
    result = await gate.process(request_with(cookie), Identity(user))
    decision = result.info.decision if isinstance(result, Passed) else result.decision
    assert isinstance(result, Passed | Respond) and decision is not None
    return decision.reason


async def test_a_verified_cookie_is_verified_once_and_then_remembered() -> None:
    gate = core()
    cookie = gate.signer.dumps([P, U, "token"], salt="twofa.device")
    await gate.store.record_verification(
        P, U, gate.device_id(P, U, "token"), None, time.time(), DAY
    )
    counting = Counting(gate)
    for _ in range(5):
        assert await reason(gate, cookie) is Reason.DEVICE_TRUSTED
    assert counting.loads == 1
    # Bound to its user, memo or not.
    assert await reason(gate, cookie, "mallory") is Reason.NEW_DEVICE
    # A forged or altered cookie is verified (and refused) every time.
    for _ in range(2):
        assert await reason(gate, cookie[:-1] + ("A" if cookie[-1] != "A" else "B")) is (
            Reason.NEW_DEVICE
        )
    assert counting.loads == 3


@pytest.mark.parametrize(
    ("age", "valid"),
    [
        (0, True),
        (RETENTION_MARGIN, True),
        (int(retention_seconds(POLICY)), True),
        (int(retention_seconds(POLICY)) + 1, False),
        (-1, False),
    ],
    ids=["new", "a-day", "at-max-age", "past-max-age", "from-the-future"],
)
async def test_a_remembered_cookie_expires_exactly_as_itsdangerous_says(
    monkeypatch: pytest.MonkeyPatch, age: int, valid: bool
) -> None:
    signed_at = 1_700_000_000
    monkeypatch.setattr(time, "time", lambda: float(signed_at))
    remembering, fresh = core(), core()
    cookie = remembering.signer.dumps([P, U, "token"], salt="twofa.device")
    for gate in (remembering, fresh):
        await gate.store.record_verification(
            P, U, gate.device_id(P, U, "token"), None, float(signed_at), DAY
        )
    assert await reason(remembering, cookie) is Reason.DEVICE_TRUSTED  # now remembered

    monkeypatch.setattr(time, "time", lambda: float(signed_at + age) + 0.5)
    expected = Reason.DEVICE_TRUSTED if valid else Reason.NEW_DEVICE
    assert await reason(remembering, cookie) is expected  # from the memo
    assert await reason(fresh, cookie) is expected  # through itsdangerous
