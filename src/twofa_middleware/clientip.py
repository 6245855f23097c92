"""Which IP a request comes from, and the key under which that IP is trusted.

Pure functions. The client IP is the socket peer unless the peer is a configured
trusted proxy; only then is X-Forwarded-For read, right to left, skipping further
trusted proxies. IPv4-mapped IPv6 addresses become IPv4; IPv6 addresses are
compared by a network prefix (default /64, since one host usually owns a /64).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import ConfigurationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A "trusted proxy" network wider than this would let most of the internet forge
# X-Forwarded-For; refuse it at start-up.
_MIN_PREFIX = {4: 8, 6: 32}


# Pure, and called on every gated request with the same few peers: memoised
# (addresses are immutable values, safe to share).
@functools.lru_cache(maxsize=4096)
def parse_ip(text: str | None) -> IPAddress | None:
    """A canonical address, or None for anything unparseable (never a match)."""
    if not text:
        return None
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[::1]:8080" style
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "1.2.3.4:5678"
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_trusted_proxies(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse a trusted-proxy list, refusing garbage and overly broad networks."""
    nets: list[IPNetwork] = []
    for raw in values:
        raw = raw.strip()
        if not raw:
            continue
        try:
            net = ipaddress.ip_network(raw, strict=False)
        except ValueError:
            raise ConfigurationError(
                f"trusted_proxies: {raw!r} is not an IP address or network (e.g. 10.0.0.0/8)"
            ) from None
        if net.prefixlen < _MIN_PREFIX[net.version]:
            raise ConfigurationError(
                f"trusted_proxies: {raw!r} is too broad; list your proxies' own addresses"
            )
        nets.append(net)
    return tuple(nets)


@dataclass(frozen=True, slots=True)
class ClientIPResolver:
    trusted_proxies: tuple[IPNetwork, ...] = ()
    ipv6_prefix: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.ipv6_prefix <= 128:
            raise ConfigurationError(
                f"ipv6_prefix must be between 1 and 128, got {self.ipv6_prefix}"
            )

    def _trusted(self, addr: IPAddress) -> bool:
        return any(addr in net for net in self.trusted_proxies)

    def resolve(self, peer: str | None, forwarded_for: Sequence[str] = ()) -> IPAddress | None:
        """The client address. ``forwarded_for`` holds every X-Forwarded-For header value."""
        addr = parse_ip(peer)
        if addr is None or not self.trusted_proxies or not self._trusted(addr):
            return addr
        hops = [h for value in forwarded_for for h in value.split(",")]
        for hop in reversed(hops):
            hop_addr = parse_ip(hop)
            if hop_addr is None:
                # A garbled hop appended by an untrusted party: stop trusting the chain.
                return addr
            if not self._trusted(hop_addr):
                return hop_addr
            addr = hop_addr
        return addr

    def key(self, addr: IPAddress | None) -> str | None:
        """The string under which trust in ``addr`` is stored (IPv6 by prefix)."""
        return None if addr is None else _key(addr, self.ipv6_prefix)


@functools.lru_cache(maxsize=4096)
def _key(addr: IPAddress, ipv6_prefix: int) -> str:
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((addr, ipv6_prefix), strict=False))
    return str(addr)
