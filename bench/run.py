"""What the 2FA layer costs per request: one command, every variant, one table.

    python bench/run.py                 # or: make bench
    python bench/run.py --duration 10 --repeats 5 --markdown out.md

It starts a private redis-server (or uses BENCH_REDIS_URL), stores the policies,
starts every variant of bench/app.py under uvicorn (one worker, uvloop, httptools,
no access log), then, for each repeat, loads each variant in turn with wrk for the
same duration (after a one-second warm-up) and reads INFO commandstats before and
after. It prints, per variant, the median req/s, p50 and p99 latency over the
repeats and their ratios to variant B; the Redis commands per request; the
round trips of a cold request; Redis memory per stored user-device; and the
decision function's cost per call.

Needs wrk (installed with apt-get when missing and running as root) and
uvloop + httptools (``pip install -e ".[bench]"``; installed when missing).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import platform
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

VARIANTS = {
    "A": "bare Starlette app",
    "B": "A + SessionMiddleware, logged in (baseline)",
    "C": "B + 2FA, portal not enforcing",
    "D": "B + 2FA, enforcing, user verified (hot path)",
    "E": "D with ip_change_only",
    "F": "B + 2FA, enforcing, exempt path",
    "G": "B + 2FA, enforcing, anonymous request",
    "H": "D without the near-cache (TWOFA_NEAR_CACHE=0)",
}
# Commands that are not the requests' own: our INFO, and the invalidation
# subscriptions' heartbeat (reported separately).
NOT_REQUESTS = {"info", "ping", "subscribe", "client", "hello"}
# The variants that run the 2FA middleware (and so its subscriptions).
A_MIDDLEWARE = frozenset("CDEFGH")
USER = "alice"
SECOND_USER = "bob"
MEMORY_USERS = 10_000


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    commands: dict[str, int]
    errors: int
    # The server process's CPU time (user + system) per request served.
    cpu_us: float = 0.0


@dataclass
class Result:
    runs: list[Run] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(float(getattr(r, name)) for r in self.runs)

    def ratios(self, base: Result, name: str) -> list[float]:
        """Per repeat: this variant's figure over B's in the same repeat (the two were
        measured seconds apart, so slow drifts of the machine cancel out)."""
        return [
            float(getattr(run, name)) / float(getattr(ref, name))
            for run, ref in zip(self.runs, base.runs, strict=True)
        ]

    def commands_per_request(self) -> float:
        total = sum(sum(r.commands.values()) for r in self.runs)
        return total / max(1, sum(r.requests for r in self.runs))


# --- tools ------------------------------------------------------------------------


def ensure_tools() -> str:
    missing = [m for m in ("uvicorn", "uvloop", "httptools") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"installing {', '.join(missing)} (the 'bench' extra) ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "uvicorn", "uvloop", "httptools"],
            check=True,
        )
    wrk = shutil.which("wrk")
    if wrk is None and shutil.which("apt-get") and os.geteuid() == 0:
        print("wrk not found: installing it with apt-get ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
        wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit(
            "wrk is needed: install the Debian/Ubuntu package (sudo apt-get install wrk),\n"
            "or build it from source, and run this again."
        )
    if shutil.which("redis-server") is None and not os.environ.get("BENCH_REDIS_URL"):
        sys.exit("redis-server is needed (apt-get install redis-server), or set BENCH_REDIS_URL")
    return wrk


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout} s")
        time.sleep(0.05)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    url = os.environ.get("BENCH_REDIS_URL")
    if url:
        yield url
        return
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="twofa-bench-redis-")
    proc = subprocess.Popen(
        [
            *priority(),
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def priority() -> list[str]:
    """As root, nice -20: other work on the machine disturbs the measurement less."""
    if os.geteuid() == 0 and shutil.which("nice"):
        return ["nice", "-n", "-20"]
    return []


def pinned(cpu: int) -> list[str]:
    """taskset prefix on machines with 2+ CPUs: server and load generator apart."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return [*priority(), "taskset", "-c", str(cpu)]
    return priority()


# --- Redis set-up and counters ----------------------------------------------------


async def prepare(redis_url: str, secret: str) -> dict[str, str]:
    """Store the policies and USER's verified device; return the cookies to send."""
    from itsdangerous import TimestampSigner

    from twofa_middleware.config import core_from_env
    from twofa_middleware.flow import retention_seconds
    from twofa_middleware.policy import PortalPolicy
    from twofa_middleware.settings.redis import RedisSettings

    settings = RedisSettings.from_url(redis_url)
    await settings.set_policy("open", PortalPolicy(enforce=False))
    await settings.set_policy("strict", PortalPolicy(enforce=True))
    await settings.set_policy("ipmode", PortalPolicy(enforce=True, ip_change_only=True))
    await settings.close()

    env = {"TWOFA_REDIS_URL": redis_url, "TWOFA_SECRET_KEY": secret, "TWOFA_NEAR_CACHE": "0"}
    core = core_from_env(env)
    ip = core.client_ip.key(core.client_ip.resolve("127.0.0.1"))
    cookies: dict[str, str] = {}
    for portal in ("strict", "ipmode"):
        parts = []
        for user in (USER, SECOND_USER):
            token = secrets.token_urlsafe(24)
            policy = PortalPolicy(enforce=True, ip_change_only=portal == "ipmode")
            await core.store.record_verification(
                portal,
                user,
                core.device_id(portal, user, token),
                ip,
                time.time(),
                retention_seconds(policy),
            )
            device = core.signer.dumps([portal, user, token], salt="twofa.device")
            parts.append(device)
        cookies[f"{portal}:{USER}"] = f"twofa_device_{portal}={parts[0]}"
        cookies[f"{portal}:{SECOND_USER}"] = f"twofa_device_{portal}={parts[1]}"
    await core.close()
    # Starlette's SessionMiddleware cookie, signed as it signs it.
    signer = TimestampSigner(secret)
    for user in (USER, SECOND_USER):
        data = base64.b64encode(json.dumps({"user": user}).encode())
        cookies[f"session:{user}"] = "session=" + signer.sign(data).decode()
    return cookies


def command_calls(redis_url: str) -> dict[str, int]:
    import redis

    with redis.Redis.from_url(redis_url) as client:
        stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def requests_only(commands: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in commands.items() if k not in NOT_REQUESTS}


async def memory_per_user_device(redis_url: str, secret: str) -> float:
    """MEMORY USAGE of MEMORY_USERS synthetic users, one device and one IP each."""
    from redis.asyncio import Redis

    from twofa_middleware import keys
    from twofa_middleware.crypto import Keyring
    from twofa_middleware.flow import retention_seconds
    from twofa_middleware.policy import PortalPolicy
    from twofa_middleware.store.redis import RedisStore

    keyring = Keyring(secret)
    store = RedisStore.from_url(redis_url)
    raw = Redis.from_url(redis_url)
    retention = retention_seconds(PortalPolicy(enforce=True))
    portal = "memtest"
    users = [f"user{i:05d}@example.com" for i in range(MEMORY_USERS)]
    try:
        for n, user in enumerate(users):
            token = secrets.token_urlsafe(24)
            device = keyring.digest("device", portal, user, token)[:16].hex()
            ip = f"10.{n // 65536}.{n // 256 % 256}.{n % 256}"
            await store.record_verification(portal, user, device, ip, time.time(), retention)
        total = 0
        async with raw.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.memory_usage(keys.user_key(portal, user, "trust"), samples=0)
            for used in await pipe.execute():
                total += int(used)
        async with raw.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.delete(keys.user_key(portal, user, "trust"))
            await pipe.execute()
        return total / len(users)
    finally:
        await store.close()
        await raw.aclose()


def decision_cost_ns() -> float:
    from twofa_middleware.decision import Identity, VerificationState, decide
    from twofa_middleware.policy import Group, PortalPolicy

    policy = PortalPolicy(enforce=True)
    identity = Identity("alice", Group.WORKER)
    now = time.time()
    state = VerificationState(now - 60, now - 60, now - 60)
    timer = timeit.Timer(lambda: decide(policy, identity, "dev", "127.0.0.1", now, state))
    number = 200_000
    best = min(timer.repeat(repeat=5, number=number))
    empty = min(timeit.Timer(lambda: None).repeat(repeat=5, number=number))
    return (best - empty) / number * 1e9


# --- servers and load -------------------------------------------------------------


@dataclass
class Server:
    variant: str
    port: int
    proc: subprocess.Popen[bytes]
    path: str
    headers: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"


def start_server(variant: str, redis_url: str, secret: str, cookies: dict[str, str]) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "BENCH_VARIANT": variant,
        "TWOFA_REDIS_URL": redis_url,
        "TWOFA_SECRET_KEY": secret,
        "TWOFA_NEAR_CACHE": "0" if variant == "H" else "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "bench")]),
    }
    command = [
        *pinned(0),
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "app:create_app",
        "--app-dir",
        str(ROOT / "bench"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
        "--lifespan",
        "on",
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    path = "/"
    headers: dict[str, str] = {}
    if variant not in ("A", "G"):
        parts = [cookies[f"session:{USER}"]]
        portal = {"D": "strict", "E": "ipmode", "F": "strict", "H": "strict"}.get(variant)
        if portal is not None:
            parts.append(cookies[f"{portal}:{USER}"])
        headers["Cookie"] = "; ".join(parts)
    server = Server(variant, port, proc, path, headers)
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
    except RuntimeError:
        proc.kill()
        _, err = proc.communicate()
        raise RuntimeError(f"variant {variant} did not start:\n{err.decode()}") from None
    return server


def opcodes_per_request(server: Server, redis_url: str, secret: str) -> int:
    """bench/opcodes.py for the variant: Python bytecodes per request, in-process."""
    env = {
        **os.environ,
        "BENCH_VARIANT": server.variant,
        "TWOFA_REDIS_URL": redis_url,
        "TWOFA_SECRET_KEY": secret,
        "TWOFA_NEAR_CACHE": "0" if server.variant == "H" else "1",
        "BENCH_COOKIE": server.headers.get("Cookie", ""),
    }
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "opcodes.py")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split()[-1])


def get(url: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def check(server: Server) -> None:
    """Every variant must answer 200 from the app (a 2FA redirect would be a bug)."""
    status, body = get(server.url, server.headers)
    expected = "ok -" if server.variant in ("A", "G") else f"ok {USER}"
    if status != 200 or body != expected:
        raise RuntimeError(f"variant {server.variant}: got {status} {body!r}, want {expected!r}")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if match is None:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(binary: str, server: Server, seconds: int, connections: int) -> tuple[Run, str]:
    command = [
        *pinned(1),
        binary,
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        *(a for k, v in server.headers.items() for a in ("-H", f"{k}: {v}")),
        server.url,
    ]
    cpu_before = cpu_seconds(server.proc.pid)
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(server.proc.pid) - cpu_before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    failed = int(bad.group(1)) if bad else 0
    if errors:
        failed += sum(int(n) for n in re.findall(r"\d+", errors.group(0)))
    return Run(rps, p50, p99, requests, {}, failed, cpu * 1e6 / max(1, requests)), out


def cold_round_trips(
    server: Server, redis_url: str, second: dict[str, str] | None
) -> tuple[dict[str, int], dict[str, int]]:
    """Commands of the very first request after start (every cache cold), then of
    another verified user's first request (policy cached, that user's state not)."""
    results = []
    for headers in (server.headers, second or server.headers):
        before = command_calls(redis_url)
        status, body = get(server.url, headers)
        if status != 200:
            raise RuntimeError(f"variant {server.variant}: cold request got {status} {body!r}")
        results.append(requests_only(delta(before, command_calls(redis_url))))
    return results[0], results[1]


# --- report -----------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    version = next((w[2:] for w in redis_version if w.startswith("v=")), "?")
    return (
        f"{os.cpu_count()} CPU ({cpu}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, redis-server {version}"
    )


Cold = dict[str, tuple[dict[str, int], dict[str, int]]]


def table(results: dict[str, Result], cold: Cold, opcodes: dict[str, int]) -> str:
    base = results["B"]
    rows = [
        "| variant | req/s | / B (range) | p50 ms | p99 ms | p99 / B (range) "
        "| server CPU µs/req | B's CPU / this (range) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        rps, p50, p99 = result.median("rps"), result.median("p50_ms"), result.median("p99_ms")
        rps_ratio, p99_ratio = result.ratios(base, "rps"), result.ratios(base, "p99_ms")
        cpu_ratio = [1 / r for r in result.ratios(base, "cpu_us")]
        rows.append(
            f"| {name}: {VARIANTS[name]} | {rps:,.0f} | {_spread(rps_ratio)} "
            f"| {p50:.2f} | {p99:.2f} | {_spread(p99_ratio)} "
            f"| {result.median('cpu_us'):.1f} | {_spread(cpu_ratio)} |"
        )
    rows += [
        "",
        "| variant | Redis cmds/req under load | 1st request | cold user "
        "| Python opcodes/req (vs B) |",
        "|---|---:|---|---|---:|",
    ]
    for name, result in results.items():
        first, second = cold.get(name, ({}, {}))
        rows.append(
            f"| {name} | {result.commands_per_request():.4f} | {_fmt(first)} | {_fmt(second)} "
            f"| {opcodes[name]:,} ({opcodes[name] - opcodes['B']:+,}) |"
        )
    return "\n".join(rows)


def _spread(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def _fmt(commands: dict[str, int]) -> str:
    if not commands:
        return "0"
    return " + ".join(f"{n} {name.upper()}" for name, n in sorted(commands.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--variants", default="".join(VARIANTS))
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    args = parser.parse_args()
    variants = [v for v in args.variants.upper() if v in VARIANTS]
    if "B" not in variants:
        variants.insert(0, "B")
    binary = ensure_tools()
    secret = secrets.token_urlsafe(48)
    started = time.monotonic()
    load_before = os.getloadavg()[0]

    with redis_server() as redis_url:
        cookies = asyncio.run(prepare(redis_url, secret))
        second = {
            variant: {
                "Cookie": f"{cookies[f'session:{SECOND_USER}']}; "
                f"{cookies[f'{portal}:{SECOND_USER}']}"
            }
            for variant, portal in (("D", "strict"), ("E", "ipmode"), ("H", "strict"))
        }
        servers: dict[str, Server] = {}
        cold: Cold = {}
        results = {v: Result() for v in variants}
        heartbeat_before = command_calls(redis_url).get("ping", 0)
        heartbeat_started = time.monotonic()
        try:
            for variant in variants:
                servers[variant] = start_server(variant, redis_url, secret, cookies)
            time.sleep(0.5)  # let every invalidation subscription come up
            for variant in variants:
                cold[variant] = cold_round_trips(servers[variant], redis_url, second.get(variant))
                check(servers[variant])
            opcodes = {
                variant: opcodes_per_request(servers[variant], redis_url, secret)
                for variant in variants
            }
            for repeat in range(args.repeats):
                for variant in variants:
                    server = servers[variant]
                    wrk(binary, server, 1, args.connections)  # warm-up
                    before = command_calls(redis_url)
                    run, output = wrk(binary, server, args.duration, args.connections)
                    run.commands = requests_only(delta(before, command_calls(redis_url)))
                    if run.errors:
                        raise RuntimeError(f"variant {variant}: {run.errors} errors\n{output}")
                    results[variant].runs.append(run)
                    print(
                        f"repeat {repeat + 1}/{args.repeats} {variant}: {run.rps:,.0f} req/s, "
                        f"p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, "
                        f"{run.cpu_us:.1f} CPU µs/req, "
                        f"{sum(run.commands.values()) / run.requests:.4f} Redis cmds/req "
                        f"{_fmt(run.commands)}",
                        flush=True,
                    )
        finally:
            for server in servers.values():
                server.proc.terminate()
            for server in servers.values():
                server.proc.wait(timeout=10)
        heartbeat = (
            (command_calls(redis_url).get("ping", 0) - heartbeat_before)
            / (time.monotonic() - heartbeat_started)
            / max(1, sum(v in A_MIDDLEWARE for v in variants))
        )
        memory = asyncio.run(memory_per_user_device(redis_url, secret))
    decision = decision_cost_ns()

    report = "\n".join(
        [
            f"Machine: {machine()}",
            f"Load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f}"
            + ("; servers, wrk and Redis ran at nice -20." if priority() else "."),
            f"wrk: 1 thread, {args.connections} connections, {args.duration:g} s per run "
            f"(after a 1 s warm-up), {args.repeats} repeats, variants interleaved; "
            "medians shown; ratios are medians of the per-repeat ratios, with their range.",
            "",
            table(results, cold, opcodes),
            "",
            f"Invalidation heartbeat: {heartbeat:.1f} PING/s per server process with the "
            "middleware (not counted above).",
            f"Redis memory per stored user-device: {memory:.0f} bytes "
            f"(MEMORY USAGE, mean over {MEMORY_USERS:,} synthetic users, one device and one IP).",
            f"Decision function: {decision:.0f} ns per call.",
            f"Total time: {time.monotonic() - started:.0f} s.",
        ]
    )
    print()
    print(report)
    if args.markdown is not None:
        args.markdown.write_text(report + "\n")


if __name__ == "__main__":
    main()
