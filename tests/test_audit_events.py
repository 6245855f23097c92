"""Audit events the flow emits where no HTTP suite can read the stream back."""

from __future__ import annotations

import pytest

from tests.support.redis_server import free_port
from twofa_middleware import audit
from twofa_middleware.decision import Identity
from twofa_middleware.flow import Respond, TwoFactor
from twofa_middleware.http import Request
from twofa_middleware.portals import single_portal
from twofa_middleware.settings.static import StaticSettings
from twofa_middleware.store import RedisStore


async def test_failing_closed_is_an_audit_event_naming_portal_user_and_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A Redis that is not there: nothing listens on this port.
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.2)
    core = TwoFactor(
        settings=StaticSettings({"acme": {"enforce": True}}),
        store=store,
        secret_key="audit-tests-secret-key-that-is-long-enough-0123",
        portal_resolver=single_portal("acme"),
    )
    request = Request("GET", "/reports", b"", {"accept": "application/json"}, client_ip="192.0.2.1")
    with caplog.at_level("INFO", logger="twofa_middleware.audit"):
        result = await core.process(request, Identity("alice"))
    await core.close()
    assert isinstance(result, Respond)
    assert result.response.status == 503
    events = [r.twofa for r in caplog.records if hasattr(r, "twofa")]
    assert [(e["event"], e["portal"], e["user"], e["path"]) for e in events] == [
        ("store_unavailable", "acme", "alice", "/reports")
    ]


@pytest.mark.parametrize(
    "user",
    ["a\nFAKE", "a\x85FAKE", "a\u2028FAKE", "a\u2029FAKE", "a\x9b31mFAKE", "a\x1b[31mFAKE"],
    ids=["lf", "nel", "line-separator", "paragraph-separator", "c1-csi", "ansi-escape"],
)
def test_no_control_or_line_breaking_character_survives_into_an_audit_record(
    user: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="twofa_middleware.audit"):
        audit.emit("challenge", portal="acme", user=user)
    [record] = caplog.records
    line = record.getMessage()
    assert len(line.splitlines()) == 1
    assert record.twofa["user"].startswith("a") and record.twofa["user"].endswith("FAKE")
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in record.twofa["user"])
