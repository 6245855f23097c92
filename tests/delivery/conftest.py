"""Fixtures for the delivery tests: a real SMTP server, a real HTTP gateway, a local CA."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.sms_gateway import Gateway, start_gateway, stop_gateway
from tests.support.smtp_server import LocalCA, SmtpServer


@pytest.fixture(scope="session")
def local_ca() -> Iterator[LocalCA]:
    ca = LocalCA()
    try:
        yield ca
    finally:
        ca.close()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """Plain SMTP (no STARTTLS offered) on 127.0.0.1."""
    with SmtpServer() as server:
        yield server


@pytest.fixture
def tls_gateway(local_ca: LocalCA) -> Iterator[Gateway]:
    """https gateway on 127.0.0.1 with a certificate from the test CA."""
    gw, thread = start_gateway(local_ca.server_context("localhost", "127.0.0.1"))
    try:
        yield gw
    finally:
        stop_gateway(gw, thread)
