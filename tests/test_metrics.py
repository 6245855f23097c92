"""Per-portal Prometheus metrics, fed by the audit events of a real flow."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator

import pytest

from tests.support.core_harness import Browser, Outbox, make_core
from twofa_middleware import metrics
from twofa_middleware.admin import PortalAdmin
from twofa_middleware.flow import TwoFactor


def test_without_prometheus_client_metrics_cost_nothing() -> None:
    """prometheus-client not importable: no counters, and ``observe`` is a bare no-op."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["prometheus_client"] = None  # import fails as if not installed
        from twofa_middleware import audit, metrics
        assert metrics.ENABLED is False
        assert metrics.observe is metrics._ignore
        audit.emit("challenge", portal="acme", user="alice", reason="new_device")
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"


def sample(name: str, **labels: str) -> float:
    prometheus_client = pytest.importorskip("prometheus_client")
    value = prometheus_client.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


@pytest.fixture
async def core(redis_url: str) -> AsyncIterator[tuple[TwoFactor, Outbox]]:
    outbox = Outbox()
    c = make_core(redis_url, outbox, portal="metrics-portal")
    await c.start()
    yield c, outbox
    await c.close()
    outbox.close()


async def test_counters_by_portal_reason_method_and_outcome(
    redis_url: str, core: tuple[TwoFactor, Outbox]
) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    assert metrics.ENABLED
    portal = "metrics-portal"
    names = {
        "challenge": ("twofa_challenges_total", {"portal": portal, "reason": "new_device"}),
        "ok": (
            "twofa_verifications_total",
            {"portal": portal, "method": "email", "outcome": "ok"},
        ),
        "failed": (
            "twofa_verifications_total",
            {"portal": portal, "method": "email", "outcome": "failed"},
        ),
        "lockout": ("twofa_lockouts_total", {"portal": portal}),
    }
    before = {k: sample(n, **labels) for k, (n, labels) in names.items()}

    async with PortalAdmin.from_url(redis_url) as admin:
        await admin.enable_portal(portal)
        browser = Browser(*core)
        await browser.get()  # challenged: new_device
        await browser.get()  # and again
        await browser.pass_email()  # one success
        await admin.revoke_portal(portal)
        await browser.get()  # challenged again after the revocation
        for _ in range(5):  # five failures ...
            await browser.post("/_2fa/challenge/email/verify", {"code": "000000"})
        locked = await browser.post("/_2fa/challenge/email/verify", {"code": "000000"})
        assert locked.status == 429  # ... then the lockout

    after = {k: sample(n, **labels) for k, (n, labels) in names.items()}
    assert after["challenge"] - before["challenge"] == 3
    assert after["ok"] - before["ok"] == 1
    assert after["failed"] - before["failed"] == 5
    assert after["lockout"] - before["lockout"] == 1
    # Exposed in Prometheus' text format under those names.
    exposed = prometheus_client.generate_latest().decode()
    assert f'twofa_lockouts_total{{portal="{portal}"}}' in exposed
