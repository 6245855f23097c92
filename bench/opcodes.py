"""Python bytecodes one request executes in a variant's app, counted in-process.

    BENCH_VARIANT=D TWOFA_REDIS_URL=... TWOFA_SECRET_KEY=... BENCH_COOKIE=... \
        python bench/opcodes.py

Unlike req/s, the count does not depend on the machine or on its load, so the
difference between a variant and B says what the middleware adds, deterministically
(the server's own work, HTTP parsing and the network are not included). Run by
run.py for every variant; prints one number: opcodes per request.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "src")]

from app import create_app  # noqa: E402

REQUESTS = 20


async def main() -> None:
    app = create_app()
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk")]
    if os.environ.get("BENCH_COOKIE"):
        headers.append((b"cookie", os.environ["BENCH_COOKIE"].encode()))
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "scheme": "http",
        "root_path": "",
    }
    startup: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    await startup.put({"type": "lifespan.startup"})
    started = asyncio.Event()

    async def lifespan_receive() -> dict[str, str]:
        return await startup.get()

    async def lifespan_send(message: Any) -> None:
        started.set()

    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, lifespan_receive, lifespan_send)
    )
    await started.wait()
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    for _ in range(50):  # warm every cache
        await app(dict(scope), receive, send)
    await asyncio.sleep(0.5)
    statuses = {m["status"] for m in sent if m["type"] == "http.response.start"}
    if statuses != {200}:
        raise SystemExit(f"unexpected statuses {statuses}")

    count = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False

        def opcode(frame: FrameType, event: str, arg: Any) -> Any:
            nonlocal count
            if event == "opcode":
                count += 1
            return opcode

        return opcode

    sys.settrace(trace)
    for _ in range(REQUESTS):
        await app(dict(scope), receive, send)
    sys.settrace(None)
    print(count // REQUESTS)
    await startup.put({"type": "lifespan.shutdown"})
    await lifespan


if __name__ == "__main__":
    asyncio.run(main())
