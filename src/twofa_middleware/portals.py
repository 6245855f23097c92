"""Which portal a request belongs to: host map, path prefix, header or callable.

A resolver returns None when it cannot tell; the middleware then answers 400 (or
uses the configured default portal), never a bypass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import ConfigurationError
from .http import Request

PortalResolver = Callable[[Request], str | None]


@dataclass(frozen=True, slots=True)
class HostPortals:
    """Portal by Host header: an exact map, or ``{portal}.<suffix>`` subdomains.

    The Host is matched against server configuration only, so a spoofed Host
    can select at most another configured portal (whose own policy then applies).
    """

    hosts: Mapping[str, str] | None = None
    suffix: str | None = None  # e.g. ".localhost": acme.localhost -> acme
    allowed: frozenset[str] | None = None  # portals a suffix match may yield
    default: str | None = None

    def __call__(self, request: Request) -> str | None:
        return self.for_host(request.header("host"))

    def for_host(self, host: str) -> str | None:
        host = host.strip().lower()
        if host.startswith("[") or not host:
            return self.default
        host = host.rsplit(":", 1)[0]
        if self.hosts and host in self.hosts:
            return self.hosts[host]
        if self.suffix and host.endswith(self.suffix):
            name = host[: -len(self.suffix)]
            if name and "." not in name and (self.allowed is None or name in self.allowed):
                return name
        return self.default


@dataclass(frozen=True, slots=True)
class PathPortals:
    """Portal by the first path segment (``/acme/...``), limited to known portals."""

    portals: frozenset[str]
    default: str | None = None

    def __call__(self, request: Request) -> str | None:
        first = request.path.lstrip("/").split("/", 1)[0]
        return first if first in self.portals else self.default


@dataclass(frozen=True, slots=True)
class HeaderPortals:
    """Portal from a header set by a trusted front proxy (never by the client)."""

    header: str
    portals: frozenset[str]
    default: str | None = None

    def __post_init__(self) -> None:
        if not self.header:
            raise ConfigurationError("HeaderPortals.header must name a header")

    def __call__(self, request: Request) -> str | None:
        value = request.header(self.header.lower()).strip()
        return value if value in self.portals else self.default


def single_portal(name: str) -> PortalResolver:
    """Every request belongs to one portal (single-tenant apps)."""

    def resolve(_request: Request) -> str | None:
        return name

    return resolve
