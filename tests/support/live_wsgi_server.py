"""Serve a WSGI app with a real waitress in a background thread, on a free port."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

from waitress import wasyncore
from waitress.server import create_server

from tests.support.redis_server import free_port

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


class LiveWSGIServer:
    def __init__(self, app: WSGIApplication) -> None:
        self.port = free_port()
        self.server = create_server(
            app,
            host="127.0.0.1",
            port=self.port,
            threads=8,
            # Keep X-Forwarded-For for the app: the middleware decides whom to trust.
            clear_untrusted_proxy_headers=False,
            ident="waitress",
        )
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        # waitress's own run() loops while any socket is open; poll in short
        # rounds instead so a stop request is seen, and close everything from this
        # thread (the only one that touches the socket map).
        server = self.server
        while not self.stopping.is_set():
            wasyncore.loop(timeout=0.05, map=server._map, count=1)
        for dispatcher in list(server._map.values()):
            dispatcher.close()
        server.task_dispatcher.shutdown()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveWSGIServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.thread.is_alive():
            if time.monotonic() > deadline:
                raise RuntimeError("waitress did not start")
            time.sleep(0.01)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
