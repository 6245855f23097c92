"""The WSGI adapter: environ -> Request, and the gate through a plain WSGI call."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from twofa_middleware.decision import Identity
from twofa_middleware.flow import TwoFactor, TwoFactorInfo
from twofa_middleware.portals import single_portal
from twofa_middleware.settings.static import StaticSettings
from twofa_middleware.store.memory import MemoryStore
from twofa_middleware.wsgi import MAX_BODY, TwoFactorWSGIMiddleware, request_from_environ

SECRET = "wsgi-test-secret-key-that-is-long-enough-0123"


def make_core() -> TwoFactor:
    return TwoFactor(
        settings=StaticSettings({"acme": {"enforce": True}}),
        store=MemoryStore(),
        secret_key=SECRET,
        portal_resolver=single_portal("acme"),
        exempt_paths=["/login"],
    )


def environ(
    path: str = "/", method: str = "GET", body: bytes = b"", **extra: Any
) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "REMOTE_ADDR": "192.0.2.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "HTTP_HOST": "acme.test",
    }
    if body:
        env["CONTENT_LENGTH"] = str(len(body))
    env.update(extra)
    return env


@pytest.mark.parametrize(
    ("env", "path"),
    [
        pytest.param(
            {"SCRIPT_NAME": "/app", "PATH_INFO": "/x"}, "/app/x", id="script-name-is-kept"
        ),
        pytest.param(
            {"PATH_INFO": "/_2fa/challenge", "REQUEST_URI": "/_2fa%2Fchallenge"},
            "/_2fa%2Fchallenge",
            id="encoded-slash-keeps-the-raw-path",
        ),
        pytest.param(
            {"PATH_INFO": "/caf\u00c3\u00a9"}, "/caf\u00e9", id="utf8-path-is-decoded-as-asgi-does"
        ),
    ],
)
def test_the_path_is_built_like_the_asgi_adapter(env: dict[str, Any], path: str) -> None:
    request = request_from_environ(environ() | env, make_core())
    assert request is not None
    assert request.path == path


def test_headers_and_client_come_from_the_environ() -> None:
    request = request_from_environ(
        environ(HTTP_X_FORWARDED_FOR="203.0.113.9", CONTENT_TYPE="application/json"), make_core()
    )
    assert request is not None
    assert request.header("x-forwarded-for") == "203.0.113.9"
    assert request.header("content-type") == "application/json"
    assert request.header("host") == "acme.test"
    assert request.client_ip == "192.0.2.1"


def test_only_our_own_post_endpoints_have_their_body_read() -> None:
    core = make_core()
    app_post = environ("/upload", "POST", b"code=123456")
    assert request_from_environ(app_post, core).body == b""  # type: ignore[union-attr]
    assert app_post["wsgi.input"].tell() == 0  # the app's stream is untouched
    ours = request_from_environ(environ("/_2fa/challenge/totp/verify", "POST", b"code=1"), core)
    assert ours is not None
    assert ours.body == b"code=1"


def test_a_too_large_body_is_refused() -> None:
    big = environ("/_2fa/challenge/totp/verify", "POST", b"x" * (MAX_BODY + 1))
    assert request_from_environ(big, make_core()) is None


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, env: dict[str, Any], start_response: Any) -> list[bytes]:
        self.calls.append(env)
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"app"]


@pytest.fixture
def gate() -> Iterator[tuple[TwoFactorWSGIMiddleware, Recorder]]:
    app = Recorder()
    middleware = TwoFactorWSGIMiddleware(
        app,  # type: ignore[arg-type]
        core=make_core(),
        identity=lambda env: Identity(id="ann") if env.get("HTTP_X_USER") else None,
    )
    yield middleware, app
    middleware.close()


def call(app: Any, env: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(app(env, start_response))
    return seen["status"], seen["headers"], body


def test_anonymous_requests_pass_with_no_decision(gate: Any) -> None:
    middleware, app = gate
    status, _, body = call(middleware, environ("/"))
    assert (status, body) == ("200 OK", b"app")
    assert app.calls[0]["twofa"] == TwoFactorInfo(None, None, None)


def test_a_due_challenge_is_answered_without_reaching_the_app(gate: Any) -> None:
    middleware, app = gate
    status, headers, body = call(
        middleware, environ("/api", HTTP_X_USER="1", HTTP_ACCEPT="application/json")
    )
    assert status == "401 Unauthorized"
    assert headers["content-length"] == str(len(body))
    assert json.loads(body)["reason"] == "new_device"
    assert app.calls == []
    status, headers, _ = call(middleware, environ("/", HTTP_X_USER="1", HTTP_ACCEPT="text/html"))
    assert status == "303 See Other"
    assert headers["location"] == "/_2fa/challenge?next=%2F"


def test_all_core_work_runs_on_one_loop_thread_whatever_the_server_thread(gate: Any) -> None:
    middleware, _ = gate
    threads: set[int] = set()
    original = middleware.core.guard

    async def spy(*args: Any) -> Any:
        threads.add(threading.get_ident())
        return await original(*args)

    middleware.core.guard = spy
    workers = [
        threading.Thread(target=call, args=(middleware, environ("/", HTTP_X_USER="1")))
        for _ in range(4)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(threads) == 1
    assert threading.get_ident() not in threads


@pytest.mark.parametrize(
    ("env", "info"),
    [
        pytest.param(environ("/"), TwoFactorInfo(None, None, None), id="anonymous"),
        pytest.param(
            environ("/login", "POST", b"password=x", HTTP_X_USER="1"),
            TwoFactorInfo(None, None, Identity(id="ann")),
            id="exempt-path",
        ),
    ],
)
def test_requests_that_pass_on_path_and_identity_never_reach_the_core_loop(
    gate: Any, env: dict[str, Any], info: TwoFactorInfo
) -> None:
    middleware, app = gate
    status, _, _ = call(middleware, env)
    assert status == "200 OK"
    assert app.calls[0]["twofa"] == info
    assert env["wsgi.input"].tell() == 0  # the app's body is untouched
    # No thread hop, no event loop: the core's loop was never even started.
    assert middleware.loop._loop is None
