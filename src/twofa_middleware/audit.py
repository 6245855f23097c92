"""Audit events: structured log records for every security-relevant step.

No codes, secrets or full contact details ever go into an event. Values are
stripped of control characters so a username or ``next`` cannot forge log lines.
A logging failure never changes the security decision.
"""

from __future__ import annotations

import contextlib
import logging
import time

log = logging.getLogger("twofa_middleware.audit")

_CONTROL = {i: None for i in range(32)} | {127: None}


def clean(value: object) -> str:
    return str(value).translate(_CONTROL)[:200]


def emit(event: str, *, portal: str, user: str | None, **fields: object) -> None:
    record = {"event": event, "portal": clean(portal), "user": clean(user), "at": time.time()}
    record.update({k: clean(v) for k, v in fields.items() if v is not None})
    # A broken log handler must never change the security decision.
    with contextlib.suppress(Exception):
        log.info(
            "%s portal=%s user=%s %s",
            event,
            record["portal"],
            record["user"],
            " ".join(
                f"{k}={v}" for k, v in record.items() if k not in ("event", "portal", "user", "at")
            ),
            extra={"twofa": record},
        )
