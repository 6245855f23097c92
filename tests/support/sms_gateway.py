"""A real HTTP server standing in for an SMS provider (webhook sender tests, e2e)."""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class GatewayRequest:
    method: str
    path: str
    headers: dict[str, str]
    json: Any


@dataclass
class Gateway:
    """A real HTTP server standing in for an SMS provider.

    ``status``, ``delay`` and ``location`` set how it answers the next requests.
    """

    server: ThreadingHTTPServer
    scheme: str
    status: int = 200
    delay: float = 0.0
    location: str | None = None
    requests: list[GatewayRequest] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_port}/send"


def start_gateway(tls_context: ssl.SSLContext | None) -> tuple[Gateway, threading.Thread]:
    gateway: Gateway

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            gateway.requests.append(
                GatewayRequest(
                    method="POST",
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    json=json.loads(body) if body else None,
                )
            )
            if gateway.delay:
                time.sleep(gateway.delay)
            self.send_response(gateway.status)
            if gateway.location is not None:
                self.send_header("Location", gateway.location)
            self.send_header("Content-Type", "application/json")
            payload = b'{"ok": true}'
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            # A client that gave up (timeout test) or refused our certificate
            # (TLS test) is the point of those tests, not a server bug.
            pass

    server = Server(("127.0.0.1", 0), Handler)
    if tls_context is not None:
        server.socket = tls_context.wrap_socket(server.socket, server_side=True)
    gateway = Gateway(server=server, scheme="https" if tls_context is not None else "http")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    return gateway, thread


def stop_gateway(gateway: Gateway, thread: threading.Thread) -> None:
    gateway.server.shutdown()
    gateway.server.server_close()
    thread.join(timeout=10)
