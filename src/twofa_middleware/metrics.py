"""Per-portal metrics for Prometheus, when ``prometheus-client`` is installed.

- ``twofa_challenges_total{portal,reason}``: requests sent to the challenge
- ``twofa_verifications_total{portal,method,outcome}``: codes checked (``ok``/``failed``)
- ``twofa_lockouts_total{portal}``: users locked out after too many failures

They are fed from the audit events (``audit.emit`` calls ``observe``), so every
place that emits an event is counted, and nothing else has to call this module.
Without ``prometheus-client`` (``pip install twofa-middleware[prometheus]``)
``observe`` is bound, at import, to a function that does nothing. The counters
live in prometheus-client's default registry: expose it the usual way, e.g.
``app.mount("/metrics", prometheus_client.make_asgi_app())``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ENABLED", "observe"]

try:
    import prometheus_client  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - exercised in a subprocess test
    prometheus_client = None  # type: ignore[assignment, unused-ignore]


def _ignore(event: str, record: Mapping[str, Any]) -> None:
    """No prometheus-client: nothing to count."""


def _counting() -> Callable[[str, Mapping[str, Any]], None]:
    assert prometheus_client is not None
    counter = prometheus_client.Counter
    challenges = counter(
        "twofa_challenges", "Requests that had to pass a second factor", ["portal", "reason"]
    )
    verifications = counter(
        "twofa_verifications",
        "Second-factor codes checked, by method and outcome",
        ["portal", "method", "outcome"],
    )
    lockouts = counter("twofa_lockouts", "Users locked out after too many failures", ["portal"])

    def observe(event: str, record: Mapping[str, Any]) -> None:
        portal = str(record.get("portal", ""))
        if event == "challenge":
            challenges.labels(portal, str(record.get("reason", ""))).inc()
        elif event == "verified":
            verifications.labels(portal, str(record.get("method", "")), "ok").inc()
        elif event == "verification_failed":
            verifications.labels(portal, str(record.get("method", "")), "failed").inc()
        elif event == "lockout":
            lockouts.labels(portal).inc()

    return observe


ENABLED: bool = prometheus_client is not None
"""Whether the counters exist (prometheus-client is importable)."""

observe: Callable[[str, Mapping[str, Any]], None] = _counting() if ENABLED else _ignore
"""Count one audit event (``event`` name, its record); a no-op without prometheus-client."""
