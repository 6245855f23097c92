from __future__ import annotations

import ipaddress

import pytest

from twofa_middleware.clientip import ClientIPResolver, parse_ip, parse_trusted_proxies
from twofa_middleware.errors import ConfigurationError

PROXY = ClientIPResolver(parse_trusted_proxies(["10.0.0.0/8", "192.168.1.1"]))


@pytest.mark.parametrize(
    ("resolver", "peer", "xff", "expected"),
    [
        pytest.param(
            ClientIPResolver(),
            "203.0.113.9",
            ["1.2.3.4"],
            "203.0.113.9",
            id="untrusted-peer-ignores-forwarded-for",
        ),
        pytest.param(PROXY, "10.1.1.1", ["1.2.3.4"], "1.2.3.4", id="trusted-proxy-reveals-client"),
        pytest.param(
            PROXY,
            "10.1.1.1",
            ["6.6.6.6, 1.2.3.4, 192.168.1.1"],
            "1.2.3.4",
            id="walked-right-to-left-skipping-trusted-hops",
        ),
        pytest.param(
            PROXY, "10.1.1.1", ["6.6.6.6", "1.2.3.4"], "1.2.3.4", id="several-headers-are-one-chain"
        ),
        pytest.param(
            PROXY, "10.1.1.1", ["garbage, 10.2.2.2"], "10.2.2.2", id="garbled-hop-stops-the-walk"
        ),
        pytest.param(PROXY, "10.1.1.1", [], "10.1.1.1", id="proxy-without-header-is-the-client"),
        pytest.param(
            PROXY, "::ffff:10.1.1.1", ["1.2.3.4"], "1.2.3.4", id="ipv4-mapped-proxy-is-recognised"
        ),
        pytest.param(
            ClientIPResolver(),
            "::ffff:203.0.113.9",
            [],
            "203.0.113.9",
            id="ipv4-mapped-is-normalised",
        ),
        pytest.param(ClientIPResolver(), None, ["1.2.3.4"], None, id="no-peer-is-unknown"),
        pytest.param(ClientIPResolver(), "unix-socket", [], None, id="unparseable-peer-is-unknown"),
    ],
)
def test_resolve(
    resolver: ClientIPResolver, peer: str | None, xff: list[str], expected: str | None
) -> None:
    got = resolver.resolve(peer, xff)
    assert (str(got) if got is not None else None) == expected


def test_ipv6_is_keyed_by_prefix() -> None:
    r = ClientIPResolver()
    a = r.key(parse_ip("2001:db8:1:2::1"))
    b = r.key(parse_ip("2001:db8:1:2:ffff::9"))
    c = r.key(parse_ip("2001:db8:1:3::1"))
    assert a == b == "2001:db8:1:2::/64"
    assert c != a
    assert ClientIPResolver(ipv6_prefix=128).key(parse_ip("2001:db8::1")) == "2001:db8::1/128"


def test_ipv4_key_is_the_address() -> None:
    assert ClientIPResolver().key(ipaddress.ip_address("203.0.113.9")) == "203.0.113.9"
    assert ClientIPResolver().key(None) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("0.0.0.0/0", "too broad", id="trust-all-ipv4-is-refused"),
        pytest.param("::/0", "too broad", id="trust-all-ipv6-is-refused"),
        pytest.param("nonsense", "not an IP address", id="garbage-is-refused"),
    ],
)
def test_bad_trusted_proxies(value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_trusted_proxies([value])


def test_bad_ipv6_prefix() -> None:
    with pytest.raises(ConfigurationError, match="ipv6_prefix"):
        ClientIPResolver(ipv6_prefix=0)
