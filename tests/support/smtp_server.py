"""A real SMTP server (aiosmtpd) on a free loopback port, owned by a test.

It runs in aiosmtpd's own thread and event loop, so it works from sync tests,
async tests and end-to-end tests that drive an app in another loop. Every
message is parsed into an ``EmailMessage`` and kept with its envelope.

Optional STARTTLS uses a certificate from :class:`LocalCA`, a throwaway
certificate authority generated per test session: clients that do not trust it
must fail (SECURITY.md item 91), clients given ``LocalCA.client_context()``
succeed.

    server = SmtpServer()
    server.start()
    try:
        ...  # send to 127.0.0.1:server.port
        msg = await server.wait_for_message("alice@example.com")
    finally:
        server.stop()
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["LocalCA", "ReceivedMessage", "SmtpServer", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCA:
    """A throwaway CA and the server certificates it issues, as files in a temp dir.

    A real CA plus leaf (rather than one self-signed leaf) mirrors production
    chains, so hostname and chain checks behave as they would against a real
    server.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="twofa-ca-"))
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "twofa test CA")])
        self._name = name
        public = self._key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, *hostnames: str) -> tuple[Path, Path]:
        """A server certificate for ``hostnames`` (DNS names or IP literals): (cert, key) files."""
        names = hostnames or ("localhost", "127.0.0.1")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = []
        for host in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        stem = self.dir / f"server-{x509.random_serial_number():x}"
        cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path

    def server_context(self, *hostnames: str) -> ssl.SSLContext:
        """A server-side context presenting a certificate for ``hostnames``."""
        cert_path, key_path = self.issue(*hostnames)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_path, key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context (chain and host name) that trusts this CA only."""
        context = ssl.create_default_context(cadata=self.cert_pem)
        assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
        return context

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    raw: bytes
    tls: bool
    login: str | None


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self._server = server

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content or envelope.content
        message = BytesParser(policy=default_policy).parsebytes(raw)
        assert isinstance(message, EmailMessage)
        # auth_data is what _authenticate returned (the login); login_data is deprecated.
        login = session.auth_data.decode() if session.authenticated else None
        self._server._record(
            ReceivedMessage(
                mail_from=envelope.mail_from,
                rcpt_tos=tuple(envelope.rcpt_tos),
                message=message,
                raw=raw,
                tls=session.ssl is not None,
                login=login,
            )
        )
        return "250 Message accepted for delivery"


class SmtpServer:
    """aiosmtpd on ``127.0.0.1:<free port>``.

    - ``tls_context``: offer STARTTLS with this server context
      (``LocalCA().server_context()``); ``require_starttls`` refuses mail before it.
    - ``credentials``: ``(user, password)`` to require AUTH (over TLS only, as
      aiosmtpd insists by default).
    """

    def __init__(
        self,
        *,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self._tls_context = tls_context
        self._require_starttls = require_starttls
        self._credentials = credentials
        self._lock = threading.Lock()
        self._received: list[ReceivedMessage] = []
        self._taken: set[int] = set()
        self._controller: Controller | None = None

    def start(self) -> SmtpServer:
        kwargs: dict[str, Any] = {
            # A fixed name avoids socket.getfqdn(), which can stall on DNS.
            "server_hostname": "localhost",
            "ready_timeout": 10.0,
        }
        if self._tls_context is not None:
            kwargs["tls_context"] = self._tls_context
            kwargs["require_starttls"] = self._require_starttls
        if self._credentials is not None:
            kwargs["authenticator"] = self._authenticate
            kwargs["auth_required"] = True
        self._controller = Controller(_Handler(self), hostname=self.host, port=self.port, **kwargs)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self._credentials is not None
        user, password = self._credentials
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode(),
            auth_data.password.decode(),
        ) == (user, password)
        # handled=False: aiosmtpd sends the 235/535 reply itself.
        return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)

    def _record(self, received: ReceivedMessage) -> None:
        with self._lock:
            self._received.append(received)

    @property
    def received(self) -> list[ReceivedMessage]:
        """Everything received so far, with envelope and TLS state (a copy)."""
        with self._lock:
            return list(self._received)

    @property
    def messages(self) -> list[EmailMessage]:
        """The parsed messages received so far (a copy)."""
        return [r.message for r in self.received]

    def clear(self) -> None:
        with self._lock:
            self._received.clear()
            self._taken.clear()

    def _take(self, to: str) -> ReceivedMessage | None:
        wanted = to.lower()
        with self._lock:
            for index, received in enumerate(self._received):
                if index in self._taken:
                    continue
                if wanted in (r.lower() for r in received.rcpt_tos):
                    # Each message is handed out once, so a test that resends a
                    # code gets the new message, not the one it already read.
                    self._taken.add(index)
                    return received
        return None

    # A timeout argument rather than asyncio.timeout() around the call: this is a
    # test helper whose error names the recipient, and the deadline is polled
    # because the messages arrive from aiosmtpd's thread, not as an awaitable.
    async def wait_for(self, to: str, timeout: float = 5.0) -> ReceivedMessage:  # noqa: ASYNC109
        """The next not-yet-returned message whose envelope is addressed to ``to``."""
        deadline = time.monotonic() + timeout
        while True:
            received = self._take(to)
            if received is not None:
                return received
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no message to {to!r} within {timeout} s")
            await asyncio.sleep(0.01)

    async def wait_for_message(self, to: str, timeout: float = 5.0) -> EmailMessage:  # noqa: ASYNC109
        """Like :meth:`wait_for`, returning the parsed message only."""
        return (await self.wait_for(to, timeout)).message
