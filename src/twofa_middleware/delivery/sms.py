"""SMS delivery of one-time codes: an HTTP webhook and a development console sender.

The webhook keeps the package provider-neutral: a small relay (or a provider
that accepts arbitrary JSON) turns ``{"to", "body", "portal", "purpose"}`` into
the provider's API call. Every failure is a ``DeliveryError`` with a generic
message (SECURITY.md item 92); the cause is chained for the operator's logs.
"""

from __future__ import annotations

import logging
import math
import ssl
import sys
from collections.abc import Mapping
from types import TracebackType
from typing import Protocol, TextIO

import httpx

from ..errors import ConfigurationError, DeliveryError
from .message import (
    CodeMessage,
    has_control_characters,
    is_loopback_host,
    render_console,
    render_sms,
)

__all__ = ["ConsoleSmsSender", "GatewayStatusError", "SmsSender", "WebhookSmsSender"]

logger = logging.getLogger(__name__)

_GENERIC_FAILURE = "could not send the SMS"


class SmsSender(Protocol):
    """Anything that can text a one-time code."""

    async def send(self, message: CodeMessage) -> None:
        """Deliver ``message``; raise ``DeliveryError`` on any failure."""
        ...


class GatewayStatusError(Exception):
    """The gateway answered with a non-2xx status.

    Only ever the ``__cause__`` of a ``DeliveryError``: the status is for the
    operator's logs, while the ``DeliveryError`` message stays generic, because a
    gateway's "400 invalid number" must not tell a user whether a phone exists.
    """

    def __init__(self, status_code: int) -> None:
        super().__init__(f"SMS gateway answered HTTP {status_code}")
        self.status_code = status_code


class WebhookSmsSender:
    """POSTs each message as JSON to a gateway URL, over one reused HTTP client.

    https is required, except for loopback hosts (a relay on the same machine,
    or tests). Redirects are not followed: a 3xx is a failure, so a misconfigured
    or compromised gateway cannot forward codes elsewhere.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5,
        headers: Mapping[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.strip():
            raise ConfigurationError("SMS webhook URL is required")
        if has_control_characters(url):
            raise ConfigurationError(
                "SMS webhook URL must not contain line breaks or control characters"
            )
        try:
            parsed = httpx.URL(url)
        except Exception as exc:  # httpx.InvalidURL, and ValueError on odd ports
            raise ConfigurationError("SMS webhook URL is not a valid URL") from exc
        # Errors name scheme and host only: the path or query may hold an API key.
        if parsed.scheme not in ("https", "http") or not parsed.host:
            raise ConfigurationError(
                f"SMS webhook URL must be an absolute https URL, got scheme {parsed.scheme!r}"
            )
        if parsed.scheme == "http" and not is_loopback_host(parsed.host):
            raise ConfigurationError(
                "SMS webhook URL must use https unless its host is loopback"
                f" (localhost, 127.0.0.1, ::1); got http for host {parsed.host!r}"
            )
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ConfigurationError(
                f"SMS webhook timeout must be a positive number, got {timeout!r}"
            )
        checked_headers: dict[str, str] = {}
        for name, value in (headers or {}).items():
            if not isinstance(name, str) or not name or has_control_characters(name):
                raise ConfigurationError(f"SMS webhook header name {name!r} is invalid")
            # Never echo the value: it is usually a bearer token.
            if not isinstance(value, str) or has_control_characters(value):
                raise ConfigurationError(
                    f"SMS webhook header {name!r} must not contain line breaks"
                    " or control characters"
                )
            checked_headers[name] = value
        self._url = parsed
        self._timeout = float(timeout)
        self._headers = checked_headers
        # True means httpx's default verified context (certifi bundle); a context
        # lets a deployment trust a private CA. Verification is never switched off.
        self._verify: ssl.SSLContext | bool = tls_context if tls_context is not None else True
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        # Scheme and host only: the path, query or headers may hold credentials.
        return f"WebhookSmsSender(url='{self._url.scheme}://{self._url.netloc.decode()}/...')"

    def _get_client(self) -> httpx.AsyncClient:
        # Created on first use, inside the running event loop, then reused so
        # connections are pooled; no await between check and assignment, so two
        # concurrent first sends cannot create two clients.
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self._timeout),
                headers=self._headers,
                verify=self._verify,
                follow_redirects=False,
            )
        return self._client

    async def send(self, message: CodeMessage) -> None:
        payload = {
            "to": message.to,
            "body": render_sms(message),
            "portal": message.portal_name,
            "purpose": message.purpose,
        }
        try:
            response = await self._get_client().post(self._url, json=payload)
        # Any exception, not a list: transport, TLS, timeout and protocol errors
        # all mean "not sent", and callers rely on one type to keep the user gated.
        except Exception as exc:
            raise DeliveryError(_GENERIC_FAILURE) from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryError(_GENERIC_FAILURE) from GatewayStatusError(response.status_code)

    async def aclose(self) -> None:
        """Close the pooled connections; the sender can be used again afterwards."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> WebhookSmsSender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class ConsoleSmsSender:
    """Development sender: writes the code to a stream instead of texting it.

    Printing the code is the point, so never configure it in production; it logs
    a warning when created to make an accidental deployment visible.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        # None means "sys.stderr at send time", so pytest's capture and any
        # later redirection of sys.stderr see the output.
        self._stream = stream
        logger.warning("ConsoleSmsSender prints one-time codes: use it in development only")

    async def send(self, message: CodeMessage) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            print(render_console(message, "sms"), file=stream, flush=True)
        except Exception as exc:
            raise DeliveryError(_GENERIC_FAILURE) from exc
