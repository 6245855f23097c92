"""WebhookSmsSender against a real HTTP(S) server on loopback; the console senders."""

from __future__ import annotations

import io
import logging
import math
import socket

import httpx
import pytest

from tests.support.sms_gateway import Gateway
from tests.support.smtp_server import LocalCA, free_port
from twofa_middleware.delivery import (
    CodeMessage,
    ConsoleEmailSender,
    ConsoleSmsSender,
    EmailSender,
    GatewayStatusError,
    SmsSender,
    WebhookSmsSender,
)
from twofa_middleware.errors import ConfigurationError, DeliveryError


def sms_message(**overrides: object) -> CodeMessage:
    fields: dict[str, object] = {
        "code": "042917",
        "portal_name": "Acme",
        "purpose": "sign-in",
        "expires_in_minutes": 5,
        "to": "+15550100",
    }
    fields.update(overrides)
    return CodeMessage(**fields)  # type: ignore[arg-type]


# --- webhook: what the gateway receives --------------------------------------------


async def test_posts_json_with_destination_body_portal_and_purpose(gateway: Gateway) -> None:
    async with WebhookSmsSender(gateway.url) as webhook:
        sender: SmsSender = webhook  # the protocol the flow depends on
        await sender.send(sms_message())

    [request] = gateway.requests
    assert request.method == "POST"
    assert request.path == "/send"
    assert request.headers["content-type"] == "application/json"
    assert request.json == {
        "to": "+15550100",
        "body": "Acme sign-in code: 042917. Expires in 5 minutes. Do not share it.",
        "portal": "Acme",
        "purpose": "sign-in",
    }


async def test_configured_headers_are_sent(gateway: Gateway) -> None:
    async with WebhookSmsSender(
        gateway.url, headers={"Authorization": "Bearer t0ken", "X-Tenant": "acme"}
    ) as sender:
        await sender.send(sms_message())
    [request] = gateway.requests
    assert request.headers["authorization"] == "Bearer t0ken"
    assert request.headers["x-tenant"] == "acme"


async def test_client_is_reused_and_usable_after_aclose(gateway: Gateway) -> None:
    sender = WebhookSmsSender(gateway.url)
    try:
        await sender.send(sms_message(code="111111"))
        await sender.send(sms_message(code="222222"))
        await sender.aclose()
        await sender.send(sms_message(code="333333"))
    finally:
        await sender.aclose()
    assert [r.json["body"].split(": ")[1][:6] for r in gateway.requests] == [
        "111111",
        "222222",
        "333333",
    ]


# --- webhook: failures (SECURITY.md item 92) -------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
async def test_non_2xx_is_a_generic_delivery_error(gateway: Gateway, status: int) -> None:
    gateway.status = status
    async with WebhookSmsSender(gateway.url) as sender:
        with pytest.raises(DeliveryError, match=r"^could not send the SMS$") as info:
            await sender.send(sms_message())
    cause = info.value.__cause__
    assert isinstance(cause, GatewayStatusError)
    assert cause.status_code == status
    assert len(gateway.requests) == 1


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_any_2xx_is_success(gateway: Gateway, status: int) -> None:
    gateway.status = status
    async with WebhookSmsSender(gateway.url) as sender:
        await sender.send(sms_message())


async def test_redirect_is_not_followed(gateway: Gateway) -> None:
    gateway.status = 307
    gateway.location = "http://127.0.0.1:9/elsewhere"
    async with WebhookSmsSender(gateway.url) as sender:
        with pytest.raises(DeliveryError) as info:
            await sender.send(sms_message())
    assert isinstance(info.value.__cause__, GatewayStatusError)
    assert info.value.__cause__.status_code == 307
    assert len(gateway.requests) == 1


async def test_nothing_listening_is_a_delivery_error() -> None:
    async with WebhookSmsSender(f"http://127.0.0.1:{free_port()}/send") as sender:
        with pytest.raises(DeliveryError, match=r"^could not send the SMS$") as info:
            await sender.send(sms_message())
    assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_slow_gateway_times_out_as_a_delivery_error(gateway: Gateway) -> None:
    gateway.delay = 1.0
    async with WebhookSmsSender(gateway.url, timeout=0.2) as sender:
        with pytest.raises(DeliveryError, match=r"^could not send the SMS$") as info:
            await sender.send(sms_message())
    assert isinstance(info.value.__cause__, httpx.TimeoutException)


async def test_silent_gateway_times_out_as_a_delivery_error() -> None:
    # Accepts TCP (kernel backlog) and never answers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/send"
        async with WebhookSmsSender(url, timeout=0.2) as sender:
            with pytest.raises(DeliveryError) as info:
                await sender.send(sms_message())
    assert isinstance(info.value.__cause__, httpx.TimeoutException)


# --- webhook: TLS --------------------------------------------------------------------


async def test_https_gateway_with_untrusted_certificate_is_a_delivery_error(
    tls_gateway: Gateway,
) -> None:
    async with WebhookSmsSender(tls_gateway.url) as sender:
        with pytest.raises(DeliveryError, match=r"^could not send the SMS$") as info:
            await sender.send(sms_message())
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value.__cause__)
    assert tls_gateway.requests == []


async def test_https_gateway_with_trusted_certificate(
    tls_gateway: Gateway, local_ca: LocalCA
) -> None:
    async with WebhookSmsSender(tls_gateway.url, tls_context=local_ca.client_context()) as sender:
        await sender.send(sms_message())
    assert [r.json["to"] for r in tls_gateway.requests] == ["+15550100"]


# --- webhook: configuration -------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://sms.example.com/send",
        "https://sms.example.com:8443/send?tenant=acme",
        "http://localhost:8080/send",
        "http://127.0.0.1/send",
        "http://[::1]:8080/send",
    ],
)
def test_accepted_urls(url: str) -> None:
    WebhookSmsSender(url)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        (
            "http://sms.example.com/send",
            "SMS webhook URL must use https unless its host is loopback (localhost, 127.0.0.1,"
            " ::1); got http for host 'sms.example.com'",
        ),
        (
            "http://10.0.0.5/send",
            "SMS webhook URL must use https unless its host is loopback (localhost, 127.0.0.1,"
            " ::1); got http for host '10.0.0.5'",
        ),
        (
            "http://localhost.example.com/send",
            "SMS webhook URL must use https unless its host is loopback (localhost, 127.0.0.1,"
            " ::1); got http for host 'localhost.example.com'",
        ),
        (
            "ftp://sms.example.com/send",
            "SMS webhook URL must be an absolute https URL, got scheme 'ftp'",
        ),
        ("sms.example.com/send", "SMS webhook URL must be an absolute https URL, got scheme ''"),
        ("", "SMS webhook URL is required"),
        (
            "https://sms.example.com/\r\nX-Evil: 1",
            "SMS webhook URL must not contain line breaks or control characters",
        ),
    ],
)
def test_refused_urls(url: str, error: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        WebhookSmsSender(url)
    assert str(info.value) == error


def test_url_errors_do_not_echo_path_or_query() -> None:
    with pytest.raises(ConfigurationError) as info:
        WebhookSmsSender("http://sms.example.com/send?api_key=SECRET")
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize("timeout", [0, -1, math.nan, True])
def test_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ConfigurationError, match=r"^SMS webhook timeout must be a positive number"):
        WebhookSmsSender("https://sms.example.com/send", timeout=timeout)


def test_header_values_with_line_breaks_are_refused_without_echo() -> None:
    with pytest.raises(ConfigurationError) as info:
        WebhookSmsSender(
            "https://sms.example.com/send", headers={"Authorization": "Bearer SECRET\r\nX: y"}
        )
    assert str(info.value) == (
        "SMS webhook header 'Authorization' must not contain line breaks or control characters"
    )


def test_repr_shows_only_scheme_and_host() -> None:
    sender = WebhookSmsSender("https://user:pw@sms.example.com/send?api_key=SECRET")
    assert "SECRET" not in repr(sender)
    assert "sms.example.com" in repr(sender)


# --- console senders ---------------------------------------------------------------


async def test_console_email_sender_prints_the_code_line() -> None:
    stream = io.StringIO()
    sender: EmailSender = ConsoleEmailSender(stream=stream)
    await sender.send(sms_message(to="alice@example.com"))
    assert stream.getvalue() == (
        "[twofa dev] code for alice@example.com: 042917"
        " (email, sign-in, Acme, expires in 5 minutes)\n"
    )


async def test_console_sms_sender_prints_to_stderr_by_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    await ConsoleSmsSender().send(sms_message())
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "[twofa dev] code for +15550100: 042917 (sms, sign-in, Acme, expires in 5 minutes)\n"
    )


def test_console_senders_warn_that_they_are_for_development(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="twofa_middleware.delivery"):
        ConsoleEmailSender()
        ConsoleSmsSender()
    assert [r.getMessage() for r in caplog.records] == [
        "ConsoleEmailSender prints one-time codes: use it in development only",
        "ConsoleSmsSender prints one-time codes: use it in development only",
    ]


async def test_console_sender_write_failure_is_a_delivery_error() -> None:
    stream = io.StringIO()
    stream.close()
    with pytest.raises(DeliveryError, match=r"^could not send the SMS$"):
        await ConsoleSmsSender(stream=stream).send(sms_message())
