"""Email delivery of one-time codes: SMTP (aiosmtplib) and a development console sender.

Security requirements covered here (SECURITY.md):

- 89: the subject never holds the code; the body holds only code, portal,
  purpose and expiry (see :mod:`.message`).
- 90: headers are built through ``EmailMessage`` (policy ``default``) from
  ``Address`` objects, and CR/LF or other control characters are refused
  explicitly, because the Python in use may predate the CVE-2024-6923 fix. The
  envelope recipient is passed to SMTP explicitly, so nothing parsed from a
  header can add a recipient.
- 91: TLS verifies the certificate and the host name: the context defaults to
  ``ssl.create_default_context()``; aiosmtplib passes the configured host as
  ``server_hostname``. With ``starttls=True`` a server that does not offer
  STARTTLS is an error, never a silent downgrade to plain text.
- 92: every failure is a ``DeliveryError`` with a generic message; the cause is
  chained for the operator's logs, never shown to the user.
"""

from __future__ import annotations

import asyncio
import datetime
import email.policy
import logging
import math
import os
import ssl
import sys
import time
from collections.abc import Mapping
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Protocol, TextIO

import aiosmtplib

from ..errors import ConfigurationError, DeliveryError
from .message import (
    CodeMessage,
    has_control_characters,
    is_loopback_host,
    render_console,
    render_html,
    render_subject,
    render_text,
)

__all__ = ["ConsoleEmailSender", "EmailSender", "SmtpEmailSender"]

logger = logging.getLogger(__name__)

_GENERIC_FAILURE = "could not send the email"

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


class EmailSender(Protocol):
    """Anything that can mail a one-time code."""

    async def send(self, message: CodeMessage) -> None:
        """Deliver ``message``; raise ``DeliveryError`` on any failure."""
        ...


# --- validation helpers, shared by __init__ and from_env so that each error names
# --- the setting the operator actually wrote (a keyword argument or a variable).


def _check_host(host: object, name: str) -> str:
    if not isinstance(host, str) or not host.strip():
        raise ConfigurationError(f"{name} is required")
    if has_control_characters(host) or any(ch.isspace() for ch in host):
        raise ConfigurationError(f"{name} must be a host name or IP address, got {host!r}")
    return host


def _check_port(port: object, name: str) -> int:
    # bool is an int subclass; port=True is a bug, not port 1.
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigurationError(f"{name} must be an integer between 1 and 65535, got {port!r}")
    return port


def _parse_sender(value: object, name: str) -> Address:
    """One mailbox, optionally with a display name: ``Acme <no-reply@acme.example>``."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{name} is required")
    # Checked before parsing: the value must never be echoed into a log line
    # with its line breaks, and the stdlib parser must never see them.
    if has_control_characters(value):
        raise ConfigurationError(f"{name} must not contain line breaks or control characters")
    invalid = ConfigurationError(
        f"{name} must be one mail address such as 'Acme <no-reply@example.com>', got {value!r}"
    )
    try:
        header = email.policy.default.header_factory("From", value)
        addresses = header.addresses
        if len(addresses) != 1 or header.defects:
            raise invalid
        parsed: Address = addresses[0]
        local, _, domain = parsed.addr_spec.rpartition("@")
        if not local or not domain:
            raise invalid
        # Rebuilt from its parts so the header is generated, not copied from input.
        return Address(display_name=parsed.display_name, addr_spec=parsed.addr_spec)
    except ConfigurationError:
        raise
    except Exception as exc:
        # The stdlib address parser raises ValueError, HeaderParseError and even
        # IndexError on malformed input; all of them mean "not an address".
        raise invalid from exc


def _check_credentials(username: object, password: object, user_name: str, pass_name: str) -> None:
    if (username is None) != (password is None):
        raise ConfigurationError(f"{user_name} and {pass_name} must be set together")
    for value, name in ((username, user_name), (password, pass_name)):
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"{name} must be a non-empty string")
        # Never echo the value: it may be the password.
        if has_control_characters(value):
            raise ConfigurationError(f"{name} must not contain line breaks or control characters")


def _default_starttls(host: str, port: int, use_tls: bool) -> bool:
    # Codes cross the network only encrypted: STARTTLS with certificate checks to
    # every host but loopback (a local MTA, typically without a certificate for its
    # name), whatever the port. A plaintext relay elsewhere must be asked for
    # explicitly (TWOFA_SMTP_STARTTLS=false).
    return not use_tls and not is_loopback_host(host)


def _parse_bool(value: str, name: str) -> bool:
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {value!r}")


class SmtpEmailSender:
    """Mails codes through an SMTP submission server, one connection per message.

    A connection per message keeps the sender stateless and safe to share across
    tasks; codes are rare enough that connection reuse would not pay for the
    reconnect-on-idle-timeout logic it needs.
    """

    def __init__(
        self,
        host: str,
        port: int = 587,
        *,
        username: str | None = None,
        password: str | None = None,
        sender: str,
        starttls: bool | None = None,
        use_tls: bool = False,
        timeout: float = 10,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self._host = _check_host(host, "SMTP host")
        self._port = _check_port(port, "SMTP port")
        self._from = _parse_sender(sender, "sender")
        _check_credentials(username, password, "username", "password")
        if starttls is True and use_tls:
            raise ConfigurationError(
                "starttls and use_tls are exclusive: use_tls is TLS from the first byte"
                " (port 465), starttls upgrades a plain connection (port 587)"
            )
        resolved_starttls = (
            _default_starttls(self._host, self._port, use_tls) if starttls is None else starttls
        )
        tls = use_tls or resolved_starttls
        if username is not None and not tls and not is_loopback_host(self._host):
            raise ConfigurationError(
                "SMTP credentials must not be sent without TLS: set starttls=True or use_tls=True"
            )
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ConfigurationError(f"SMTP timeout must be a positive number, got {timeout!r}")
        self._username = username
        self._password = password
        self._starttls = resolved_starttls
        self._use_tls = use_tls
        self._timeout = float(timeout)
        # Explicit, never None: aiosmtplib would build an equivalent context, but
        # item 91 is about exactly this argument, so it is visible here.
        self._tls_context = tls_context if tls_context is not None else ssl.create_default_context()

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def starttls(self) -> bool:
        return self._starttls

    @property
    def use_tls(self) -> bool:
        return self._use_tls

    @property
    def sender(self) -> str:
        return str(self._from)

    def __repr__(self) -> str:
        return (
            f"SmtpEmailSender(host={self._host!r}, port={self._port}, sender={str(self._from)!r},"
            f" starttls={self._starttls}, use_tls={self._use_tls},"
            f" username={self._username!r}, password={'***' if self._password else None})"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SmtpEmailSender:
        """Build a sender from ``TWOFA_SMTP_*`` variables (``os.environ`` by default).

        - ``TWOFA_SMTP_HOST`` (required)
        - ``TWOFA_SMTP_PORT``: default 465 when ``TWOFA_SMTP_TLS`` is true, else 587
        - ``TWOFA_SMTP_USERNAME`` / ``TWOFA_SMTP_PASSWORD``: both or neither
        - ``TWOFA_SMTP_FROM`` (required): ``no-reply@example.com`` or ``Acme <no-reply@...>``
        - ``TWOFA_SMTP_STARTTLS``: true/false; default true unless the port is 25,
          the host is loopback, or ``TWOFA_SMTP_TLS`` is true
        - ``TWOFA_SMTP_TLS``: true/false, TLS from the first byte; default true iff port 465

        An empty variable counts as unset (compose files and .env templates
        often declare every variable). A bad value raises ``ConfigurationError``
        naming the variable.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value else None

        host = _check_host(get("TWOFA_SMTP_HOST"), "TWOFA_SMTP_HOST")

        raw_tls = get("TWOFA_SMTP_TLS")
        raw_port = get("TWOFA_SMTP_PORT")
        if raw_port is None:
            use_tls = raw_tls is not None and _parse_bool(raw_tls, "TWOFA_SMTP_TLS")
            port = 465 if use_tls else 587
        else:
            try:
                port_value: object = int(raw_port.strip(), 10)
            except ValueError:
                port_value = raw_port
            port = _check_port(port_value, "TWOFA_SMTP_PORT")
            use_tls = _parse_bool(raw_tls, "TWOFA_SMTP_TLS") if raw_tls else port == 465

        sender = str(_parse_sender(get("TWOFA_SMTP_FROM"), "TWOFA_SMTP_FROM"))

        username = get("TWOFA_SMTP_USERNAME")
        password = get("TWOFA_SMTP_PASSWORD")
        _check_credentials(username, password, "TWOFA_SMTP_USERNAME", "TWOFA_SMTP_PASSWORD")

        raw_starttls = get("TWOFA_SMTP_STARTTLS")
        if raw_starttls is None:
            starttls = _default_starttls(host, port, use_tls)
        else:
            starttls = _parse_bool(raw_starttls, "TWOFA_SMTP_STARTTLS")
            if starttls and use_tls:
                raise ConfigurationError(
                    "TWOFA_SMTP_STARTTLS and TWOFA_SMTP_TLS cannot both be true"
                )
        if username is not None and not (starttls or use_tls) and not is_loopback_host(host):
            raise ConfigurationError(
                "TWOFA_SMTP_PASSWORD must not be sent without TLS:"
                " set TWOFA_SMTP_STARTTLS=true or TWOFA_SMTP_TLS=true"
            )
        return cls(
            host,
            port,
            username=username,
            password=password,
            sender=sender,
            starttls=starttls,
            use_tls=use_tls,
        )

    def build_message(self, message: CodeMessage) -> tuple[EmailMessage, str]:
        """The MIME message and the envelope recipient; ``ValueError`` if unsafe.

        Public so that tests and previews can inspect exactly what would be sent.
        """
        # Second line of defence: CodeMessage refuses these at construction, but
        # a header is the one place where a slipped line break becomes an attack.
        for field, value in (("to", message.to), ("portal_name", message.portal_name)):
            if has_control_characters(value):
                raise ValueError(f"{field} must not contain line breaks or control characters")
        try:
            # addr_spec= accepts exactly one bare address: "a@x, b@y" or
            # "Name <a@x>" are refused instead of silently adding recipients.
            recipient = Address(addr_spec=message.to)
        except Exception as exc:
            # The stdlib parser raises several types (ValueError, HeaderParseError,
            # IndexError, InvalidHeaderDefect) for malformed input.
            raise ValueError("the recipient is not a single mail address") from exc
        if not recipient.username or not recipient.domain:
            raise ValueError("the recipient is not a single mail address")

        mail = EmailMessage(policy=email.policy.default)
        mail["Subject"] = render_subject(message)
        mail["From"] = self._from
        mail["To"] = recipient
        mail["Date"] = format_datetime(_utcnow())
        mail["Message-ID"] = make_msgid(domain=self._from.domain or None)
        # RFC 3834: tells vacation responders and mailing lists not to answer.
        mail["Auto-Submitted"] = "auto-generated"
        mail.set_content(render_text(message))
        mail.add_alternative(render_html(message), subtype="html")
        return mail, recipient.addr_spec

    async def send(self, message: CodeMessage) -> None:
        try:
            mail, recipient = self.build_message(message)
        except Exception as exc:
            raise DeliveryError(_GENERIC_FAILURE) from exc

        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            use_tls=self._use_tls,
            # STARTTLS and login are done explicitly below rather than "on
            # connect", so that a failure in either still leaves us the socket
            # to wait on (see _wait_closed).
            start_tls=False,
            validate_certs=True,
            tls_context=self._tls_context,
            timeout=self._timeout,
        )
        sock: _Socket | None = None
        try:
            await client.connect()
            sock = client.get_transport_info("socket")
            if self._starttls:
                # Raises if the server does not offer STARTTLS: never a silent
                # downgrade to plain text (an attacker on the path can strip
                # the offer). The context checks the certificate and the host
                # name, which aiosmtplib passes as server_hostname.
                await client.starttls()
            if self._username is not None and self._password is not None:
                await client.login(self._username, self._password)
            refused, _ = await client.send_message(
                mail, sender=self._from.addr_spec, recipients=[recipient]
            )
            if refused:
                raise aiosmtplib.SMTPException("the recipient was refused")
        except asyncio.CancelledError:
            client.close()
            raise
        # Any exception, not a list: aiosmtplib, ssl, socket and asyncio errors all
        # mean "not sent", and callers rely on one exception type to stay gated.
        except Exception as exc:
            client.close()
            await _wait_closed(sock)
            raise DeliveryError(_GENERIC_FAILURE) from exc
        # The server has accepted the message: a failing QUIT is not a failed
        # delivery, and reporting one would make the user ask for a second code.
        try:
            await client.quit()
        except Exception:
            logger.debug("SMTP QUIT failed after the message was accepted", exc_info=True)
            client.close()
        await _wait_closed(sock)


class _Socket(Protocol):
    def fileno(self) -> int: ...


_CLOSE_WAIT_SECONDS = 1.0


async def _wait_closed(sock: _Socket | None) -> None:
    """Give the event loop up to a second to finish closing the connection.

    ``close()`` returns before the socket is closed: a TLS connection first
    exchanges close_notify, on the loop. A short-lived loop (a test, a CLI
    command) closed meanwhile leaves the socket open, which Python reports as
    an unclosed-transport ResourceWarning. asyncio offers no awaitable for
    this, so the socket (closed means ``fileno() == -1``) is polled.
    """
    if sock is None:
        return
    deadline = time.monotonic() + _CLOSE_WAIT_SECONDS
    while sock.fileno() != -1 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.005)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ConsoleEmailSender:
    """Development sender: writes the code to a stream instead of mailing it.

    Printing the code is the point, so never configure it in production; it logs
    a warning when created to make an accidental deployment visible.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        # None means "sys.stderr at send time", so pytest's capture and any
        # later redirection of sys.stderr see the output.
        self._stream = stream
        logger.warning("ConsoleEmailSender prints one-time codes: use it in development only")

    async def send(self, message: CodeMessage) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            print(render_console(message, "email"), file=stream, flush=True)
        except Exception as exc:
            raise DeliveryError(_GENERIC_FAILURE) from exc
