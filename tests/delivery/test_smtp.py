"""SmtpEmailSender against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import math
import socket
import ssl
from collections.abc import Iterator

import aiosmtplib
import pytest

from tests.support.smtp_server import LocalCA, SmtpServer
from twofa_middleware.delivery import CodeMessage, EmailSender, SmtpEmailSender
from twofa_middleware.errors import ConfigurationError, DeliveryError

SENDER = "Acme <no-reply@acme.example>"


def code_message(to: str = "alice@example.com", **overrides: object) -> CodeMessage:
    fields: dict[str, object] = {
        "code": "042917",
        "portal_name": "Acme",
        "purpose": "sign-in",
        "expires_in_minutes": 5,
        "to": to,
    }
    fields.update(overrides)
    return CodeMessage(**fields)  # type: ignore[arg-type]


def sender_for(server: SmtpServer, **kwargs: object) -> SmtpEmailSender:
    return SmtpEmailSender(server.host, server.port, sender=SENDER, **kwargs)  # type: ignore[arg-type]


def causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc.__cause__
    while current is not None:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


@pytest.fixture
def tls_server(local_ca: LocalCA) -> Iterator[SmtpServer]:
    """Offers STARTTLS with a certificate for localhost/127.0.0.1 from the test CA."""
    with SmtpServer(
        tls_context=local_ca.server_context("localhost", "127.0.0.1"), require_starttls=True
    ) as server:
        yield server


# --- what arrives ---------------------------------------------------------------


async def test_mail_has_text_and_html_parts_with_code_portal_and_expiry(
    smtp_server: SmtpServer,
) -> None:
    sender: EmailSender = sender_for(smtp_server)
    await sender.send(code_message())

    mail = await smtp_server.wait_for_message("alice@example.com")
    assert mail.get_content_type() == "multipart/alternative"
    text_part = mail.get_body(preferencelist=("plain",))
    html_part = mail.get_body(preferencelist=("html",))
    assert text_part is not None and html_part is not None
    text, html = text_part.get_content(), html_part.get_content()
    for body in (text, html):
        assert "042917" in body
        assert "Acme" in body
        assert "sign-in" in body
        assert "expires in 5 minutes" in body


async def test_subject_and_headers_do_not_leak_the_code(smtp_server: SmtpServer) -> None:
    await sender_for(smtp_server).send(code_message())

    received = await smtp_server.wait_for("alice@example.com")
    mail = received.message
    assert mail["Subject"] == "Your sign-in code for Acme"
    assert mail["From"] == SENDER
    assert mail["To"] == "alice@example.com"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail["Date"] is not None
    assert mail["Message-ID"].endswith("@acme.example>")
    # The code is only in the bodies, never in any header.
    header_block = received.raw.split(b"\r\n\r\n", 1)[0]
    assert b"042917" not in header_block


async def test_envelope_has_exactly_the_one_recipient(smtp_server: SmtpServer) -> None:
    await sender_for(smtp_server).send(code_message())

    received = await smtp_server.wait_for("alice@example.com")
    assert received.mail_from == "no-reply@acme.example"
    assert received.rcpt_tos == ("alice@example.com",)


async def test_non_ascii_portal_name_round_trips(smtp_server: SmtpServer) -> None:
    await sender_for(smtp_server).send(code_message(portal_name="Café Zürich"))

    mail = await smtp_server.wait_for_message("alice@example.com")
    assert mail["Subject"] == "Your sign-in code for Café Zürich"
    body = mail.get_body(preferencelist=("plain",))
    assert body is not None and "Café Zürich" in body.get_content()


async def test_loopback_server_defaults_to_plain_smtp(smtp_server: SmtpServer) -> None:
    sender = sender_for(smtp_server)
    assert sender.starttls is False
    await sender.send(code_message())
    assert (await smtp_server.wait_for("alice@example.com")).tls is False


async def test_wait_for_message_hands_out_each_message_once(smtp_server: SmtpServer) -> None:
    sender = sender_for(smtp_server)
    await sender.send(code_message(code="111111"))
    await sender.send(code_message(to="bob@example.com", code="222222"))
    await sender.send(code_message(code="333333"))

    first = await smtp_server.wait_for_message("alice@example.com")
    second = await smtp_server.wait_for_message("ALICE@example.com")
    bob = await smtp_server.wait_for_message("bob@example.com")
    for mail, code in ((first, "111111"), (second, "333333"), (bob, "222222")):
        part = mail.get_body(preferencelist=("plain",))
        assert part is not None and code in part.get_content()
    with pytest.raises(TimeoutError, match=r"no message to 'alice@example.com'"):
        await smtp_server.wait_for_message("alice@example.com", timeout=0.1)
    assert len(smtp_server.messages) == 3


# --- header injection (SECURITY.md item 90) ---------------------------------------


async def test_crlf_in_the_recipient_is_refused_before_anything_is_sent(
    smtp_server: SmtpServer,
) -> None:
    with pytest.raises(ValueError, match=r"CodeMessage.to must not contain line breaks"):
        code_message(to="alice@example.com\r\nBcc: mallory@evil.example")


async def test_sender_refuses_a_recipient_with_crlf_even_if_the_message_was_forged(
    smtp_server: SmtpServer,
) -> None:
    # Defence in depth: bypass CodeMessage's own check and show the sender's.
    message = code_message()
    object.__setattr__(message, "to", "alice@example.com\r\nBcc: mallory@evil.example")

    with pytest.raises(DeliveryError, match=r"^could not send the email$") as info:
        await sender_for(smtp_server).send(message)
    assert isinstance(info.value.__cause__, ValueError)

    await sender_for(smtp_server).send(code_message(to="canary@example.com"))
    await smtp_server.wait_for_message("canary@example.com")
    assert [r.rcpt_tos for r in smtp_server.received] == [("canary@example.com",)]
    assert b"Bcc" not in smtp_server.received[0].raw
    assert b"evil.example" not in smtp_server.received[0].raw


@pytest.mark.parametrize(
    "to",
    [
        "alice@example.com, mallory@evil.example",
        "Alice <alice@example.com>",
        "alice@example.com mallory@evil.example",
        "alice",
        "alice@",
        "@example.com",
        "alice@@example.com",
    ],
)
async def test_recipient_must_be_exactly_one_bare_address(smtp_server: SmtpServer, to: str) -> None:
    with pytest.raises(DeliveryError, match=r"^could not send the email$") as info:
        await sender_for(smtp_server).send(code_message(to=to))
    assert isinstance(info.value.__cause__, ValueError)
    assert smtp_server.received == []


def test_crlf_in_the_from_display_name_is_refused() -> None:
    # ConfigurationError is a ValueError, as item 90's test asks.
    with pytest.raises(ValueError, match=r"^sender must not contain line breaks or control"):
        SmtpEmailSender("127.0.0.1", 2525, sender="x\r\nBcc: a@evil <no-reply@acme.example>")


# --- TLS (SECURITY.md item 91) ----------------------------------------------------


async def test_required_starttls_not_offered_by_server_is_a_delivery_error(
    smtp_server: SmtpServer,
) -> None:
    sender = sender_for(smtp_server, starttls=True)
    with pytest.raises(DeliveryError, match=r"^could not send the email$") as info:
        await sender.send(code_message())
    assert any("STARTTLS" in str(c) for c in causes(info.value))
    assert smtp_server.received == []


async def test_untrusted_certificate_is_a_delivery_error(tls_server: SmtpServer) -> None:
    # Default context: the system trust store does not know the test CA.
    sender = sender_for(tls_server, starttls=True)
    with pytest.raises(DeliveryError, match=r"^could not send the email$") as info:
        await sender.send(code_message())
    assert any(isinstance(c, ssl.SSLCertVerificationError) for c in causes(info.value))
    assert tls_server.received == []


async def test_trusted_certificate_delivers_over_tls(
    tls_server: SmtpServer, local_ca: LocalCA
) -> None:
    sender = sender_for(tls_server, starttls=True, tls_context=local_ca.client_context())
    await sender.send(code_message())
    assert (await tls_server.wait_for("alice@example.com")).tls is True


async def test_certificate_for_another_host_name_is_a_delivery_error(
    local_ca: LocalCA,
) -> None:
    with SmtpServer(tls_context=local_ca.server_context("mail.example.com")) as server:
        sender = sender_for(server, starttls=True, tls_context=local_ca.client_context())
        with pytest.raises(DeliveryError) as info:
            await sender.send(code_message())
        verify_errors = [
            c for c in causes(info.value) if isinstance(c, ssl.SSLCertVerificationError)
        ]
        assert verify_errors and "IP address mismatch" in str(verify_errors[0])
        assert server.received == []


async def test_plain_sender_is_refused_by_a_server_requiring_starttls(
    tls_server: SmtpServer,
) -> None:
    with pytest.raises(DeliveryError, match=r"^could not send the email$") as info:
        await sender_for(tls_server, starttls=False).send(code_message())
    cause = info.value.__cause__
    assert isinstance(cause, aiosmtplib.SMTPResponseException) and cause.code == 530
    assert tls_server.received == []


# --- authentication ---------------------------------------------------------------


async def test_login_over_starttls(local_ca: LocalCA) -> None:
    with SmtpServer(
        tls_context=local_ca.server_context("127.0.0.1"), credentials=("mailer", "s3cret")
    ) as server:
        sender = sender_for(
            server,
            starttls=True,
            tls_context=local_ca.client_context(),
            username="mailer",
            password="s3cret",
        )
        await sender.send(code_message())
        received = await server.wait_for("alice@example.com")
        assert received.login == "mailer"
        assert received.tls is True


async def test_wrong_password_is_a_delivery_error(local_ca: LocalCA) -> None:
    with SmtpServer(
        tls_context=local_ca.server_context("127.0.0.1"), credentials=("mailer", "s3cret")
    ) as server:
        sender = sender_for(
            server,
            starttls=True,
            tls_context=local_ca.client_context(),
            username="mailer",
            password="wrong",
        )
        with pytest.raises(DeliveryError, match=r"^could not send the email$") as info:
            await sender.send(code_message())
        assert isinstance(info.value.__cause__, aiosmtplib.SMTPAuthenticationError)
        assert server.received == []


# --- transport failures (SECURITY.md item 92) --------------------------------------


async def test_server_down_is_a_delivery_error() -> None:
    server = SmtpServer()  # port chosen, never started: nothing listens
    with pytest.raises(DeliveryError, match=r"^could not send the email$") as info:
        await sender_for(server).send(code_message())
    assert isinstance(info.value.__cause__, aiosmtplib.SMTPConnectError)
    assert isinstance(info.value.__cause__.__cause__, ConnectionRefusedError)


async def test_silent_server_times_out_as_a_delivery_error() -> None:
    # Accepts TCP connections (kernel backlog) but never sends the SMTP greeting.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        sender = SmtpEmailSender("127.0.0.1", port, sender=SENDER, timeout=0.2)
        with pytest.raises(DeliveryError, match=r"^could not send the email$") as info:
            await sender.send(code_message())
        assert isinstance(info.value.__cause__, aiosmtplib.SMTPTimeoutError)


async def test_sender_is_reusable_after_a_failure(smtp_server: SmtpServer) -> None:
    sender = sender_for(smtp_server)
    with pytest.raises(DeliveryError):
        await sender.send(code_message(to="not-an-address"))
    await sender.send(code_message())
    await smtp_server.wait_for_message("alice@example.com")


# --- constructor validation ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"port": 0}, "SMTP port must be an integer between 1 and 65535, got 0"),
        ({"port": 65536}, "SMTP port must be an integer between 1 and 65535, got 65536"),
        ({"port": True}, "SMTP port must be an integer between 1 and 65535, got True"),
        ({"port": "587"}, "SMTP port must be an integer between 1 and 65535, got '587'"),
        ({"host": ""}, "SMTP host is required"),
        (
            {"host": "mail example.com"},
            "SMTP host must be a host name or IP address, got 'mail example.com'",
        ),
        ({"sender": ""}, "sender is required"),
        (
            {"sender": "Acme"},
            "sender must be one mail address such as 'Acme <no-reply@example.com>', got 'Acme'",
        ),
        (
            {"sender": "a@example.com, b@example.com"},
            "sender must be one mail address such as "
            "'Acme <no-reply@example.com>', got 'a@example.com, b@example.com'",
        ),
        (
            {"sender": "x@"},
            "sender must be one mail address such as 'Acme <no-reply@example.com>', got 'x@'",
        ),
        ({"username": "u"}, "username and password must be set together"),
        ({"password": "p"}, "username and password must be set together"),
        (
            {"username": "u", "password": "p\n"},
            "password must not contain line breaks or control characters",
        ),
        ({"starttls": True, "use_tls": True}, "starttls and use_tls are exclusive"),
        (
            {"starttls": False, "username": "u", "password": "p"},
            "SMTP credentials must not be sent without TLS: set starttls=True or use_tls=True",
        ),
        ({"timeout": 0}, "SMTP timeout must be a positive number, got 0"),
        ({"timeout": -1.5}, "SMTP timeout must be a positive number, got -1.5"),
        ({"timeout": math.inf}, "SMTP timeout must be a positive number, got inf"),
    ],
)
def test_constructor_refuses_bad_settings(kwargs: dict[str, object], error: str) -> None:
    args: dict[str, object] = {"host": "smtp.example.com", "port": 587, "sender": SENDER}
    args.update(kwargs)
    with pytest.raises(ConfigurationError) as info:
        SmtpEmailSender(**args)  # type: ignore[arg-type]
    assert str(info.value).startswith(error)


@pytest.mark.parametrize(
    ("host", "port", "use_tls", "expected_starttls"),
    [
        ("smtp.example.com", 587, False, True),
        ("smtp.example.com", 2525, False, True),
        ("smtp.example.com", 25, False, True),
        ("smtp.example.com", 465, True, False),
        ("localhost", 587, False, False),
        ("127.0.0.1", 587, False, False),
        ("::1", 587, False, False),
    ],
)
def test_starttls_default(host: str, port: int, use_tls: bool, expected_starttls: bool) -> None:
    sender = SmtpEmailSender(host, port, sender=SENDER, use_tls=use_tls)
    assert sender.starttls is expected_starttls


def test_credentials_without_tls_are_allowed_to_a_loopback_relay() -> None:
    sender = SmtpEmailSender("localhost", 25, sender=SENDER, username="u", password="p")
    assert sender.starttls is False


def test_repr_hides_the_password() -> None:
    sender = SmtpEmailSender("smtp.example.com", sender=SENDER, username="u", password="hunter2")
    assert "hunter2" not in repr(sender)
    assert "password=***" in repr(sender)


# --- from_env ---------------------------------------------------------------------

BASE_ENV = {"TWOFA_SMTP_HOST": "smtp.example.com", "TWOFA_SMTP_FROM": SENDER}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ("smtp.example.com", 587, True, False)),
        ({"TWOFA_SMTP_PORT": "2525"}, ("smtp.example.com", 2525, True, False)),
        ({"TWOFA_SMTP_PORT": " 25 "}, ("smtp.example.com", 25, True, False)),
        (
            {"TWOFA_SMTP_PORT": "25", "TWOFA_SMTP_STARTTLS": "false"},
            ("smtp.example.com", 25, False, False),
        ),
        ({"TWOFA_SMTP_PORT": "465"}, ("smtp.example.com", 465, False, True)),
        ({"TWOFA_SMTP_TLS": "true"}, ("smtp.example.com", 465, False, True)),
        ({"TWOFA_SMTP_TLS": "false"}, ("smtp.example.com", 587, True, False)),
        (
            {"TWOFA_SMTP_PORT": "587", "TWOFA_SMTP_TLS": "yes"},
            ("smtp.example.com", 587, False, True),
        ),
        ({"TWOFA_SMTP_HOST": "localhost"}, ("localhost", 587, False, False)),
        ({"TWOFA_SMTP_HOST": "127.0.0.1"}, ("127.0.0.1", 587, False, False)),
        (
            {"TWOFA_SMTP_HOST": "127.0.0.1", "TWOFA_SMTP_STARTTLS": "TRUE"},
            ("127.0.0.1", 587, True, False),
        ),
        ({"TWOFA_SMTP_STARTTLS": "False"}, ("smtp.example.com", 587, False, False)),
        ({"TWOFA_SMTP_STARTTLS": "0"}, ("smtp.example.com", 587, False, False)),
        ({"TWOFA_SMTP_STARTTLS": ""}, ("smtp.example.com", 587, True, False)),
        (
            {"TWOFA_SMTP_USERNAME": "u", "TWOFA_SMTP_PASSWORD": "p"},
            ("smtp.example.com", 587, True, False),
        ),
        (
            {"TWOFA_SMTP_USERNAME": "", "TWOFA_SMTP_PASSWORD": ""},
            ("smtp.example.com", 587, True, False),
        ),
    ],
)
def test_from_env_good_values(env: dict[str, str], expected: tuple[str, int, bool, bool]) -> None:
    sender = SmtpEmailSender.from_env({**BASE_ENV, **env})
    assert (sender.host, sender.port, sender.starttls, sender.use_tls) == expected
    assert sender.sender == SENDER


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in BASE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TWOFA_SMTP_PORT", "2525")
    assert SmtpEmailSender.from_env().port == 2525


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"TWOFA_SMTP_HOST": None}, "TWOFA_SMTP_HOST is required"),
        ({"TWOFA_SMTP_HOST": ""}, "TWOFA_SMTP_HOST is required"),
        (
            {"TWOFA_SMTP_HOST": "smtp example.com"},
            "TWOFA_SMTP_HOST must be a host name or IP address, got 'smtp example.com'",
        ),
        ({"TWOFA_SMTP_FROM": None}, "TWOFA_SMTP_FROM is required"),
        (
            {"TWOFA_SMTP_FROM": "no-reply"},
            "TWOFA_SMTP_FROM must be one mail address such as 'Acme <no-reply@example.com>', "
            "got 'no-reply'",
        ),
        (
            {"TWOFA_SMTP_FROM": "Acme <no-reply@acme.example>\r\nBcc: a@evil.example"},
            "TWOFA_SMTP_FROM must not contain line breaks or control characters",
        ),
        (
            {"TWOFA_SMTP_PORT": "smtp"},
            "TWOFA_SMTP_PORT must be an integer between 1 and 65535, got 'smtp'",
        ),
        ({"TWOFA_SMTP_PORT": "0"}, "TWOFA_SMTP_PORT must be an integer between 1 and 65535, got 0"),
        (
            {"TWOFA_SMTP_PORT": "65536"},
            "TWOFA_SMTP_PORT must be an integer between 1 and 65535, got 65536",
        ),
        (
            {"TWOFA_SMTP_PORT": "58.7"},
            "TWOFA_SMTP_PORT must be an integer between 1 and 65535, got '58.7'",
        ),
        (
            {"TWOFA_SMTP_STARTTLS": "maybe"},
            "TWOFA_SMTP_STARTTLS must be true or false, got 'maybe'",
        ),
        ({"TWOFA_SMTP_TLS": "sometimes"}, "TWOFA_SMTP_TLS must be true or false, got 'sometimes'"),
        (
            {"TWOFA_SMTP_PORT": "465", "TWOFA_SMTP_TLS": "2"},
            "TWOFA_SMTP_TLS must be true or false, got '2'",
        ),
        (
            {"TWOFA_SMTP_TLS": "true", "TWOFA_SMTP_STARTTLS": "true"},
            "TWOFA_SMTP_STARTTLS and TWOFA_SMTP_TLS cannot both be true",
        ),
        (
            {"TWOFA_SMTP_USERNAME": "u"},
            "TWOFA_SMTP_USERNAME and TWOFA_SMTP_PASSWORD must be set together",
        ),
        (
            {"TWOFA_SMTP_PASSWORD": "p"},
            "TWOFA_SMTP_USERNAME and TWOFA_SMTP_PASSWORD must be set together",
        ),
        (
            {"TWOFA_SMTP_USERNAME": "u", "TWOFA_SMTP_PASSWORD": "p\x00"},
            "TWOFA_SMTP_PASSWORD must not contain line breaks or control characters",
        ),
        (
            {
                "TWOFA_SMTP_USERNAME": "u",
                "TWOFA_SMTP_PASSWORD": "p",
                "TWOFA_SMTP_PORT": "25",
                "TWOFA_SMTP_STARTTLS": "false",
            },
            "TWOFA_SMTP_PASSWORD must not be sent without TLS: "
            "set TWOFA_SMTP_STARTTLS=true or TWOFA_SMTP_TLS=true",
        ),
    ],
)
def test_from_env_bad_values(env: dict[str, str | None], error: str) -> None:
    merged = {**BASE_ENV, **env}
    environ = {k: v for k, v in merged.items() if v is not None}
    with pytest.raises(ConfigurationError) as info:
        SmtpEmailSender.from_env(environ)
    assert str(info.value) == error


def test_from_env_never_echoes_the_password() -> None:
    env = {**BASE_ENV, "TWOFA_SMTP_USERNAME": "u", "TWOFA_SMTP_PASSWORD": "hunter2\n"}
    with pytest.raises(ConfigurationError) as info:
        SmtpEmailSender.from_env(env)
    assert "hunter2" not in str(info.value)
