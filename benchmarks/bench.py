"""Side-by-side open-loop benchmark of trimail and what it competes with, behind one SMTP sink.

Targets: ``trimail``; ``ceiling`` (a bare Quart-Trio app on Hypercorn that parses the JSON and
answers 202: the framework's ceiling); ``fastapi-mail`` (FastAPI + fastapi-mail sending in
BackgroundTasks on uvicorn); ``naive`` (a Quart-Trio app that sends with smtplib before
answering). Sink modes: ``instant``, ``slow`` (1 s per mail, concurrently) and ``flaky`` (451
to every 10th DATA). Every run starts a fresh sink and server, drives an open-loop load at a
constant rate, waits (bounded) for the accepted mails, and reads the server's RSS and CPU from
/proc. ``--find-max`` searches the highest rate that keeps p99 within a limit; ``--suite full``
runs the whole comparison and checks trimail's targets.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, NamedTuple

import cpu_profile
import trio

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LOOPBACK = "127.0.0.1"
TARGETS = ("trimail", "ceiling", "fastapi-mail", "naive")
SINKS = ("instant", "slow", "flaky")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MiB = 1024 * 1024
#: trimail serve's own listen backlog (trimail.http.server.LISTEN_BACKLOG); the Hypercorn CLI
#: default of 100 would overflow under bursts of new connections.
BACKLOG = 2048

# The load generator speaks HTTP/1.1 over raw trio sockets instead of httpx.AsyncClient.
# Measured on the 2-core benchmark machine against a trivial keep-alive server, in this open-loop
# driver: httpx cost 2.4 / 1.3 ms of CPU per request at 100 / 500 req/s (p99 7.9 ms at 500),
# the raw client 0.8 / 0.4 ms (p99 2.6 ms); closed-loop maxima were ~850 vs ~10,000 req/s.
# With two cores shared by driver, server and sink, httpx's cost would be charged to the server
# under test, so the minimal client below is used (keep-alive, Content-Length and chunked bodies;
# no pipelining, no TLS; loopback only).


class HttpResponse(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


class _StreamReader:
    """Buffered reads from a trio stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self.buffer = bytearray()

    async def _fill(self) -> None:
        data = await self._stream.receive_some(65536)
        if not data:
            raise ConnectionResetError("connection closed by server")
        self.buffer += data

    async def read_until(self, separator: bytes, limit: int = 65536) -> bytes:
        while True:
            index = self.buffer.find(separator)
            if index >= 0:
                chunk = bytes(self.buffer[: index + len(separator)])
                del self.buffer[: index + len(separator)]
                return chunk
            if len(self.buffer) > limit:
                raise ValueError("HTTP header section too long")
            await self._fill()

    async def read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._fill()
        chunk = bytes(self.buffer[:size])
        del self.buffer[:size]
        return chunk

    async def read_to_eof(self) -> bytes:
        with contextlib.suppress(ConnectionResetError):
            while True:
                await self._fill()
        chunk = bytes(self.buffer)
        self.buffer.clear()
        return chunk


class RawHttpClient:
    """Minimal HTTP/1.1 client with a keep-alive connection pool, for one loopback host:port."""

    #: Idle connections older than this are closed rather than reused, so that a server's
    #: keep-alive timeout (Hypercorn's default is 5 s) never races a new request.
    MAX_IDLE_SECONDS = 2.0

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: deque[tuple[float, trio.SocketStream]] = deque()  # (idle since, stream)

    async def _connection(self) -> trio.SocketStream:
        # The deque is ordered by idle-since time: stale connections gather on the left.
        oldest_allowed = trio.current_time() - self.MAX_IDLE_SECONDS
        while self._idle and self._idle[0][0] < oldest_allowed:
            await trio.aclose_forcefully(self._idle.popleft()[1])
        if self._idle:
            return self._idle.pop()[1]
        return await trio.open_tcp_stream(self.host, self.port)

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
    ) -> HttpResponse:
        stream = await self._connection()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        reusable = False
        try:
            await stream.send_all(head.encode("ascii") + b"\r\n" + body)
            response, reusable = await self._read_response(_StreamReader(stream), method)
        finally:
            if reusable:
                self._idle.append((trio.current_time(), stream))
            else:
                await trio.aclose_forcefully(stream)
        return response

    @staticmethod
    async def _read_response(reader: _StreamReader, method: str) -> tuple[HttpResponse, bool]:
        while True:
            lines = (await reader.read_until(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            status = int(rest.split(" ", 1)[0])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            if status >= 200 or status == 101:
                break  # skip interim 1xx responses such as 100 Continue
        keep_alive = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.read_until(b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    while await reader.read_until(b"\r\n") != b"\r\n":
                        pass  # trailers
                    break
                parts.append(await reader.read_exact(size))
                await reader.read_exact(2)
            body = b"".join(parts)
        elif "content-length" in headers:
            body = await reader.read_exact(int(headers["content-length"]))
        else:
            body, keep_alive = await reader.read_to_eof(), False
        reusable = keep_alive and not reader.buffer
        return HttpResponse(status, headers, body), reusable

    async def aclose(self) -> None:
        while self._idle:
            await trio.aclose_forcefully(self._idle.pop()[1])


# --------------------------------------------------------------------------- processes and /proc


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free TCP ports on the loopback interface."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for child processes: unbuffered, no inherited settings of the targets."""
    prefixes = ("TRIMAIL_", "NAIVE_", "FASTAPI_SMTP_", "MAIL_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@contextlib.asynccontextmanager
async def managed_process(
    command: Sequence[str],
    *,
    stdout: int | IO[Any],
    stderr: int | IO[Any],
    stop_timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> AsyncIterator[trio.Process]:
    """Start a subprocess and make sure it is stopped (SIGTERM, then SIGKILL, by PID) on exit."""
    process = await trio.lowlevel.open_process(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=env if env is not None else server_env(),
        cwd=cwd,
    )
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            await stop_process(process, stop_timeout)


async def stop_process(
    process: trio.Process, timeout: float, hurry_after: float | None = None
) -> tuple[int | None, float]:
    """SIGTERM ``process`` by PID, wait up to ``timeout`` s, then SIGKILL; return (code, secs).

    ``hurry_after``: send a second SIGTERM after that many seconds (trimail ends its drain at
    once on a second signal), for runs whose backlog is not worth waiting for.
    """
    started = trio.current_time()
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        if hurry_after is not None and hurry_after < timeout:
            with trio.move_on_after(hurry_after):
                await process.wait()
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        with trio.move_on_at(started + timeout):
            await process.wait()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    return process.returncode, trio.current_time() - started


def _read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process, from /proc (None where unavailable)."""
    fields = _read_stat(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants, found by scanning /proc for parent ids."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _read_stat(int(name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def system_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat.

    Busy is user + nice + system: interrupt and softirq time (loopback networking, much of it
    ours) is left out, since it cannot be told apart by process."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return math.nan, math.nan
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system) / CLK_TCK, steal / CLK_TCK


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def busy_processes(limit: int = 6) -> list[str]:
    """The processes using the most CPU over the last second, as short ps-like lines."""
    mine = set(tree_pids(os.getpid()))

    def snapshot() -> dict[int, float]:
        cpu = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) not in mine:
                value = process_cpu_seconds(int(name))
                if value is not None:
                    cpu[int(name)] = value
        return cpu

    before = snapshot()
    time.sleep(1.0)
    after = snapshot()
    used = sorted(((after[p] - before.get(p, 0.0), p) for p in after), reverse=True)
    lines = []
    for seconds, pid in used[:limit]:
        if seconds < 0.05:
            break
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        lines.append(f"{seconds * 100:5.0f}% cpu  pid {pid}  {cmd.strip()[:110]}")
    return lines


class TreeMonitor:
    """Samples the RSS of a process tree (root and descendants) and reads its CPU time."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.pids = tree_pids(root)
        self.samples: list[tuple[float, int]] = []  # (trio time, bytes)

    def cpu(self) -> dict[int, float]:
        self.pids = tree_pids(self.root)
        return {p: c for p in self.pids if (c := process_cpu_seconds(p)) is not None}

    async def run(self) -> None:
        for n in range(10**9):
            if n % 10 == 9:  # the tree rarely changes: rescan /proc once a second
                self.pids = tree_pids(self.root)
            self.samples.append((trio.current_time(), sum(rss_bytes(p) for p in self.pids)))
            await trio.sleep(self.interval)

    def peak(self, start: float = -math.inf, end: float = math.inf) -> float:
        values = [rss for t, rss in self.samples if start <= t <= end]
        return max(values) / MiB if values else math.nan


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").rstrip()
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class SinkMonitor:
    """Follows the sink's stdout protocol (see benchmarks/sink.py): what arrived, and when."""

    def __init__(self) -> None:
        self.ready = trio.Event()
        self.count = 0
        self.refused = 0
        self.tokens: dict[str, list[float]] = {}  # token -> wall-clock times it was delivered
        self.delivery_walls: list[float] = []
        self.pending: set[str] = set()
        self.progress = trio.Event()

    def expect(self, tokens: set[str]) -> None:
        """Track ``tokens`` until each has been delivered (see :attr:`pending`)."""
        self.pending = {t for t in tokens if t not in self.tokens}

    async def follow(self, stream: trio.abc.ReceiveStream) -> None:
        reader = _StreamReader(stream)
        with contextlib.suppress(ConnectionResetError, trio.ClosedResourceError):
            while True:
                words = (await reader.read_until(b"\n")).decode("utf-8", "replace").split()
                if words[:1] == ["ready"]:
                    self.ready.set()
                elif words[:1] == ["delivered"] and len(words) == 4:
                    self.count = int(words[1])
                    wall = float(words[2])
                    self.delivery_walls.append(wall)
                    self.tokens.setdefault(words[3], []).append(wall)
                    self.pending.discard(words[3])
                    self.progress.set()
                    self.progress = trio.Event()
                elif words[:1] == ["refused"] and len(words) == 4:
                    self.refused = int(words[1])
                elif words[:1] == ["stopped"] and len(words) == 2:
                    self.count = max(self.count, int(words[1]))


async def wait_for_pending(sink: SinkMonitor, timeout: float, stall: float) -> None:
    """Wait until the sink has every expected token, ``timeout`` passes or ``stall`` s idle."""
    with trio.move_on_after(timeout):
        while sink.pending:
            with trio.move_on_after(stall) as idle:
                await sink.progress.wait()
            if idle.cancelled_caught:
                return


# --------------------------------------------------------------------------- load


@dataclass
class Outcome:
    token: str
    latency: float  # seconds from the scheduled send time to the response or the failure
    completed: float  # trio clock time of the response or failure
    status: int | None = None
    error: str | None = None
    retry_after: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def request_body(token: str) -> bytes:
    """One request; its token is in the subject and the body, where the sink looks for it."""
    return json.dumps(
        {
            "from": "Bench <bench@example.com>",
            "to": "rcpt@example.com",
            "subject": f"benchmark message bench-token-{token}",
            "text": f"Benchmark message bench-token-{token}.\n",
        }
    ).encode()


async def run_open_loop(
    port: int, rate: float, duration: float, max_in_flight: int, timeout: float, run_id: str
) -> tuple[float, list[Outcome]]:
    """Send ``rate * duration`` requests at fixed scheduled times; return (start, outcomes).

    Open loop: request i is due at ``start + i / rate`` whether or not earlier ones have
    answered, and its latency counts from that due time, so a server stall (or waiting for
    one of the ``max_in_flight`` slots) shows up in the latencies instead of slowing the load.
    """
    total = max(1, round(rate * duration))
    outcomes: list[Outcome | None] = [None] * total
    limiter = trio.CapacityLimiter(max_in_flight)
    client = RawHttpClient(LOOPBACK, port)

    async def one(index: int, due: float) -> None:
        token = f"{run_id}x{index}"
        body = request_body(token)
        status: int | None = None
        error: str | None = None
        retry_after = False
        with trio.move_on_at(due + timeout) as scope:
            try:
                async with limiter:
                    response = await client.request("POST", "/email/send", body)
                status = response.status
                retry_after = "retry-after" in response.headers
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except Exception as exc:  # connection errors, bad responses: count them all
                error = type(exc).__name__
        if scope.cancelled_caught:
            error = "timeout"
        now = trio.current_time()
        outcomes[index] = Outcome(token, now - due, now, status, error, retry_after)

    start = trio.current_time() + 0.05
    try:
        async with trio.open_nursery() as nursery:
            for index in range(total):
                due = start + index / rate
                await trio.sleep_until(due)
                nursery.start_soon(one, index, due)
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()
    return start, [o for o in outcomes if o is not None]


async def warm_up(port: int, count: int, run_id: str, concurrency: int = 4) -> set[str]:
    """Send ``count`` requests, ``concurrency`` at a time, before measuring; return the tokens
    of those answered 2xx. First requests pay for lazy imports, caches and first connections."""
    client = RawHttpClient(LOOPBACK, port)
    accepted: set[str] = set()
    limiter = trio.CapacityLimiter(concurrency)

    async def one(index: int) -> None:
        token = f"{run_id}w{index}"
        async with limiter:
            with contextlib.suppress(Exception), trio.move_on_after(10):
                response = await client.request("POST", "/email/send", request_body(token))
                if 200 <= response.status < 300:
                    accepted.add(token)

    try:
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(one, index)
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()
    return accepted


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunSpec:
    """One target against one sink mode at one rate, with the target's settings."""

    target: str
    sink: str
    rate: float
    duration: float
    store: str = "memory"  # trimail's TRIMAIL_STORE kind: memory, sqlite or postgresql
    workers: int = 256  # trimail delivery workers (per process)
    queue_size: int = 10_000  # trimail queue (per process)
    naive_threads: int = 256
    hypercorn_workers: int = 0  # trimail and ceiling: 0 = one process, K = hypercorn -w K
    uvicorn_workers: int = 1  # fastapi-mail
    switch_interval: float | None = None  # trimail serve: sys.setswitchinterval (None: 5 ms)
    purpose: str = ""  # what the run is for (suite checks)

    @property
    def delivers(self) -> bool:
        return self.target != "ceiling"

    @property
    def sink_label(self) -> str:
        return "n/a" if self.target == "ceiling" else self.sink

    @property
    def setup(self) -> str:
        procs = f", hypercorn -w {self.hypercorn_workers}" if self.hypercorn_workers else ""
        if self.target == "trimail":
            per = "/proc" if self.hypercorn_workers > 1 else ""
            store = "" if self.store == "memory" else f" {self.store}"
            switch = "" if self.switch_interval is None else f" si={self.switch_interval * 1e3:g}ms"
            return f"W={self.workers}{per} Q={self.queue_size}{per}{procs}{store}{switch}"
        if self.target == "ceiling":
            return f"1 proc{procs}" if not procs else procs[2:]
        if self.target == "fastapi-mail":
            return "uvicorn" + (f" -w {self.uvicorn_workers}" if self.uvicorn_workers > 1 else "")
        return f"threads={self.naive_threads}"


@dataclass
class RunResult:
    spec: RunSpec
    requests: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    achieved_rps: float = math.nan
    delivered: int | None = None  # messages the sink accepted by the end of the drain
    lost: int | None = None  # accepted (2xx) but not delivered by the end of the drain
    duplicates: int | None = None  # tokens delivered more than once (after shutdown)
    drain_s: float = math.nan
    mails_per_s: float = math.nan
    steady_mails_per_s: float = math.nan
    lag_p99_s: float = math.nan
    lag_max_s: float = math.nan
    peak_rss_mib: float = math.nan
    rss_early_mib: float = math.nan  # peak RSS over 20-30 % of the load
    rss_late_mib: float = math.nan  # peak RSS over the last 10 % of the load
    cpu_s: float = math.nan
    other_cpu_s: float = math.nan  # CPU used by everything else on the machine meanwhile
    status_503: int = 0
    status_503_retry_after: int = 0
    notes: list[str] = field(default_factory=list)
    failed: str | None = None
    profile: list[tuple[str, float]] = field(default_factory=list)  # (area, share), py-spy

    @property
    def error_count(self) -> int:
        return self.requests - self.ok


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def store_url(spec: RunSpec, opts: argparse.Namespace, logdir: Path) -> str:
    """A fresh store for one run: a new SQLite file, or a new PostgreSQL database."""
    if spec.store == "sqlite":
        return f"sqlite://{logdir / ('spool-' + secrets.token_hex(4) + '.db')}"
    if spec.store == "postgresql":
        return str(postgres(opts).database())
    return "memory"


def postgres(opts: argparse.Namespace) -> Any:
    """The run's PostgreSQL cluster (fsync and synchronous commit on), started on first use."""
    if getattr(opts, "postgres", None) is None:
        sys.path.insert(0, str(REPO))
        from tests.pgserver import PostgresServer, find_binaries

        binaries = find_binaries()
        if binaries is None:
            raise RuntimeError("PostgreSQL server binaries are missing (Debian's postgresql)")
        opts.postgres = PostgresServer(binaries, durable=True)
    return opts.postgres


def uvicorn_flavour() -> str:
    """What uvicorn will pick with --loop auto --http auto in this environment."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"{loop}+{http}"


def server_command(
    spec: RunSpec, http_port: int, smtp_port: int, store: str = "memory"
) -> tuple[list[str], dict[str, str], Path | None]:
    """(argv, environment, working directory) of the server for ``spec``; ``store`` its URL."""
    py = sys.executable
    bind = f"{LOOPBACK}:{http_port}"
    hypercorn = [py, "-m", "hypercorn", "--worker-class", "trio", "--backlog", str(BACKLOG)]
    hypercorn += ["--workers", str(spec.hypercorn_workers), "--bind", bind]
    if spec.target == "trimail":
        settings = {
            "smtp_host": LOOPBACK,
            "smtp_port": str(smtp_port),
            "smtp_security": "none",
            "workers": str(spec.workers),
            "queue_size": str(spec.queue_size),
            "log_level": "WARNING",
            "store": store,
        }
        if spec.hypercorn_workers:
            env = server_env({f"TRIMAIL_{k.upper()}": v for k, v in settings.items()})
            return [*hypercorn, "trimail.http:create_app()"], env, REPO
        argv = [py, "-m", "trimail", "serve", "--host", LOOPBACK, "--port", str(http_port)]
        if spec.switch_interval is not None:  # the GIL's switch interval, for its measurement
            start = f"import sys; sys.setswitchinterval({spec.switch_interval}); "
            start += "sys.argv[0] = 'trimail'; from trimail.cli import main; sys.exit(main())"
            argv = [py, "-c", start, *argv[3:]]
        for key, value in settings.items():
            argv += ["--" + key.replace("_", "-"), value]
        return argv, server_env(), None
    if spec.target == "ceiling":
        if spec.hypercorn_workers:
            return [*hypercorn, "ceiling_app:app"], server_env({"PYTHONPATH": str(HERE)}), HERE
        return [py, str(HERE / "ceiling_app.py"), "--port", str(http_port)], server_env(), None
    if spec.target == "fastapi-mail":
        argv = [py, "-m", "uvicorn", "--app-dir", str(HERE), "fastapi_app:app"]
        argv += ["--host", LOOPBACK, "--port", str(http_port), "--backlog", str(BACKLOG)]
        argv += ["--no-access-log", "--log-level", "warning"]
        if spec.uvicorn_workers > 1:
            argv += ["--workers", str(spec.uvicorn_workers)]
        env = {"FASTAPI_SMTP_HOST": LOOPBACK, "FASTAPI_SMTP_PORT": str(smtp_port)}
        return argv, server_env(env), None
    argv = [py, str(HERE / "naive_app.py"), "--host", LOOPBACK, "--port", str(http_port)]
    argv += ["--smtp-host", LOOPBACK, "--smtp-port", str(smtp_port)]
    argv += ["--threads", str(spec.naive_threads)]
    return argv, server_env(), None


async def wait_http_ready(process: trio.Process, port: int, timeout: float) -> None:
    """Poll GET /healthz until it answers 200; fail if the process exits."""
    client = RawHttpClient(LOOPBACK, port)
    try:
        with trio.fail_after(timeout):
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"server exited early with code {process.returncode}")
                with contextlib.suppress(OSError, ValueError, trio.BrokenResourceError):
                    with trio.move_on_after(2):
                        response = await client.request("GET", "/healthz")
                        if response.status == 200:
                            return
                await trio.sleep(0.1)
    finally:
        await client.aclose()


@dataclass
class RunLimits:
    """How long a run may wait for things, and what happens at its end."""

    drain_timeout: float
    drain_stall: float
    start_timeout: float
    stop_timeout: float
    hurry_stop: bool = False  # second SIGTERM after 2 s (find-max steps)


async def run_one(
    spec: RunSpec, opts: argparse.Namespace, logdir: Path, limits: RunLimits
) -> RunResult:
    """Fresh sink, fresh server, one load; every subprocess is stopped by PID on the way out."""
    result = RunResult(spec=spec)
    run_id = secrets.token_hex(4)
    smtp_port, http_port = free_ports(2)
    sink_cmd = [sys.executable, str(HERE / "sink.py"), "--port", str(smtp_port)]
    sink_cmd += ["--mode", spec.sink]
    if spec.sink == "slow":
        sink_cmd += ["--delay", str(opts.slow_delay)]
    if spec.sink == "flaky":
        sink_cmd += ["--fail-every", str(opts.fail_every)]
    stem = f"{spec.target}-{spec.sink}-{spec.rate:g}-{run_id}"
    sink_log_path, server_log_path = logdir / f"{stem}-sink.log", logdir / f"{stem}-server.log"
    sink = SinkMonitor()
    command, env, cwd = server_command(spec, http_port, smtp_port, store_url(spec, opts, logdir))
    with sink_log_path.open("wb") as sink_log, server_log_path.open("wb") as server_log:
        async with (
            trio.open_nursery() as nursery,
            managed_process(
                sink_cmd, stdout=subprocess.PIPE, stderr=sink_log, stop_timeout=5
            ) as sink_proc,
        ):
            assert sink_proc.stdout is not None
            nursery.start_soon(sink.follow, sink_proc.stdout)
            with trio.fail_after(15):
                await sink.ready.wait()
            async with managed_process(
                command,
                stdout=server_log,
                stderr=server_log,
                stop_timeout=limits.stop_timeout,
                env=env,
                cwd=cwd,
            ) as server:
                try:
                    await wait_http_ready(server, http_port, limits.start_timeout)
                except (RuntimeError, trio.TooSlowError) as exc:
                    raise RuntimeError(
                        f"{spec.target} did not become ready: {exc}\n"
                        f"--- {server_log_path} ---\n{log_tail(server_log_path)}"
                    ) from None
                if spec.hypercorn_workers > 1 or spec.uvicorn_workers > 1:
                    await trio.sleep(1.5)  # let every worker process finish starting
                if opts.warmup:
                    warm_tokens = await warm_up(http_port, opts.warmup, run_id)
                    if spec.delivers:
                        sink.expect(warm_tokens)
                        await wait_for_pending(sink, 10.0, 5.0)
                    await trio.sleep(0.2)
                monitor = TreeMonitor(server.pid)
                cpu_before = monitor.cpu()
                sink_cpu_before = process_cpu_seconds(sink_proc.pid) or 0.0
                system_before, steal_before = system_cpu()
                driver_before = time.process_time()
                wall_offset = time.time() - trio.current_time()
                profiler = None
                if opts.py_spy:
                    raw = logdir / f"{stem}.raw"
                    profiler = cpu_profile.record(
                        server.pid, spec.duration, raw, gil=opts.py_spy_gil
                    )
                async with trio.open_nursery() as sampler:
                    sampler.start_soon(monitor.run)
                    start, outcomes = await run_open_loop(
                        http_port,
                        spec.rate,
                        spec.duration,
                        opts.max_in_flight,
                        opts.timeout,
                        run_id,
                    )
                    summarize_load(result, start, outcomes)
                    accepted = {o.token for o in outcomes if o.ok}
                    if spec.delivers:
                        sink.expect(accepted)
                        await wait_for_pending(sink, limits.drain_timeout, limits.drain_stall)
                    drain_end = trio.current_time()
                    sampler.cancel_scope.cancel()
                cpu_after = monitor.cpu()
                driver_cpu = time.process_time() - driver_before
                system_after, steal_after = system_cpu()
                sink_cpu = (process_cpu_seconds(sink_proc.pid) or 0.0) - sink_cpu_before
                measured = f"{run_id}x"  # tokens of the measured load, not of the warm-up
                delivered_at_drain = {
                    t: walls[0] for t, walls in sink.tokens.items() if t.startswith(measured)
                }
                count_at_drain = sum(
                    len(walls) for t, walls in sink.tokens.items() if t.startswith(measured)
                )
                code, stop_secs = await stop_process(
                    server, limits.stop_timeout, 2.0 if limits.hurry_stop else None
                )
            # Let the sink report what the server delivered while stopping.
            await trio.sleep(0.3)
    result.cpu_s = sum(cpu_after[p] - cpu_before.get(p, 0.0) for p in cpu_after)
    load_end = start + spec.duration
    result.peak_rss_mib = monitor.peak()
    result.rss_early_mib = monitor.peak(start + 0.2 * spec.duration, start + 0.3 * spec.duration)
    result.rss_late_mib = monitor.peak(start + 0.9 * spec.duration, load_end)
    other = (system_after - system_before) - result.cpu_s - sink_cpu - driver_cpu
    result.other_cpu_s = max(0.0, other)
    result.notes.append(
        f"CPU s during load+drain ({drain_end - start:.1f} s): server {result.cpu_s:.2f}, "
        f"sink {sink_cpu:.2f}, load driver {driver_cpu:.2f}, everything else {max(0, other):.2f}"
        + (f", steal {steal_after - steal_before:.2f}" if steal_after > steal_before else "")
    )
    result.notes.append(
        f"RSS MiB of the server tree: 20-30% of load {result.rss_early_mib:.1f}, last 10% "
        f"{result.rss_late_mib:.1f}, peak {result.peak_rss_mib:.1f} ({len(monitor.pids)} procs)"
    )
    if result.status_503:
        result.notes.append(
            f"503 answers: {result.status_503}, with Retry-After: {result.status_503_retry_after}"
        )
    if spec.delivers:
        summarize_delivery(
            result, outcomes, sink, delivered_at_drain, count_at_drain, start, wall_offset, measured
        )
    result.notes.append(f"SIGTERM -> exit code {code} in {stop_secs:.2f} s")
    if profiler is not None:
        await trio.to_thread.run_sync(profiler.wait)
        areas = cpu_profile.table(cpu_profile.summarize(raw))
        result.profile = areas
        shares = ", ".join(f"{area} {100 * share:.0f} %" for area, share in areas if share >= 0.01)
        result.notes.append(f"py-spy (threads on a CPU, during the load): {shares}")
    if result.errors:
        breakdown = ", ".join(f"{kind} x{n}" for kind, n in result.errors.most_common())
        result.notes.append(f"errors: {breakdown}")
    return result


def summarize_load(result: RunResult, start: float, outcomes: list[Outcome]) -> None:
    result.requests = len(outcomes)
    result.ok = sum(1 for o in outcomes if o.ok)
    result.errors = Counter(o.error or "unknown" for o in outcomes if not o.ok)
    result.status_503 = sum(1 for o in outcomes if o.status == 503)
    result.status_503_retry_after = sum(1 for o in outcomes if o.status == 503 and o.retry_after)
    latencies = sorted(o.latency * 1000 for o in outcomes)
    result.p50_ms = percentile(latencies, 50)
    result.p99_ms = percentile(latencies, 99)
    result.max_ms = latencies[-1] if latencies else math.nan
    ok_done = [o.completed for o in outcomes if o.ok]
    if ok_done and max(ok_done) > start:
        result.achieved_rps = len(ok_done) / (max(ok_done) - start)


def summarize_delivery(
    result: RunResult,
    outcomes: list[Outcome],
    sink: SinkMonitor,
    delivered_at_drain: dict[str, float],
    count_at_drain: int,
    start: float,
    wall_offset: float,
    measured: str,
) -> None:
    spec = result.spec
    start_wall = start + wall_offset
    accepted = {o.token: o.completed + wall_offset for o in outcomes if o.ok}
    result.delivered = count_at_drain
    result.lost = sum(1 for t in accepted if t not in delivered_at_drain)
    copies = [len(walls) for t, walls in sink.tokens.items() if t.startswith(measured)]
    result.duplicates = sum(1 for n in copies if n > 1)
    walls = sorted(w for w in delivered_at_drain.values())
    if walls:
        result.mails_per_s = count_at_drain / max(1e-9, walls[-1] - start_wall)
        if accepted:
            result.drain_s = max(0.0, walls[-1] - max(accepted.values()))
        window = (start_wall + 2.0, start_wall + spec.duration)
        if window[1] - window[0] >= 2.0:
            inside = sum(1 for w in sink.delivery_walls if window[0] <= w < window[1])
            result.steady_mails_per_s = inside / (window[1] - window[0])
    lags = sorted(delivered_at_drain[t] - w for t, w in accepted.items() if t in delivered_at_drain)
    if lags:
        result.lag_p99_s = percentile(lags, 99)
        result.lag_max_s = lags[-1]
    extra = sum(n - 1 for n in copies if n > 1)
    unaccepted = sum(1 for t in delivered_at_drain if t not in accepted)
    after = sum(len(w) for t, w in sink.tokens.items() if t.startswith(measured)) - count_at_drain
    result.notes.append(
        f"delivery: lag after the 2xx p99 {result.lag_p99_s:.2f} s, max {result.lag_max_s:.2f} s; "
        f"steady {result.steady_mails_per_s:.1f} mails/s (from 2 s into the load to its end); "
        f"sink refused (451) {sink.refused}; delivered without a 2xx {unaccepted}; "
        f"extra copies {extra}; delivered after the drain (at SIGTERM) {after}"
    )


# --------------------------------------------------------------------------- find-max


@dataclass
class Step:
    result: RunResult
    latency_ok: bool  # p99 within the limit and no errors
    delivery_ok: bool | None  # every accepted mail delivered within the limit (None: n/a)
    why: str


@dataclass
class FindMax:
    spec: RunSpec  # the rate field is meaningless here
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0
    failed: str | None = None

    def best(self, criterion: Callable[[Step], bool | None]) -> tuple[float | None, float | None]:
        """(highest passing rate, lowest failing rate above it) for ``criterion``."""
        passing = [s.result.spec.rate for s in self.steps if criterion(s)]
        lo = max(passing) if passing else None
        failing = [
            s.result.spec.rate
            for s in self.steps
            if not criterion(s) and (lo is None or s.result.spec.rate > lo)
        ]
        return lo, (min(failing) if failing else None)

    @property
    def latency(self) -> tuple[float | None, float | None]:
        return self.best(lambda s: s.latency_ok)

    @property
    def with_delivery(self) -> tuple[float | None, float | None]:
        return self.best(lambda s: s.latency_ok and bool(s.delivery_ok))


def judge(result: RunResult, opts: argparse.Namespace) -> Step:
    reasons = []
    if result.failed:
        reasons.append("run failed")
    elif not result.p99_ms <= opts.p99_limit_ms:
        reasons.append(f"p99 {result.p99_ms:,.0f} ms")
    if result.error_count:
        reasons.append(f"{result.error_count} errors")
    delivery_ok: bool | None = None
    if result.spec.delivers and not result.failed:
        delivery_ok = result.lost == 0 and result.lag_max_s <= opts.deliver_within
        if result.lost:
            reasons.append(f"{result.lost} not delivered within the drain")
        elif not result.lag_max_s <= opts.deliver_within:
            reasons.append(f"delivery lag max {result.lag_max_s:.1f} s")
    latency_ok = not result.failed and result.p99_ms <= opts.p99_limit_ms
    latency_ok = latency_ok and result.error_count == 0
    return Step(result, latency_ok, delivery_ok, "; ".join(reasons) or "pass")


def _round_rate(rate: float) -> float:
    return float(max(5, round(rate / 5) * 5))


async def find_max(
    base: RunSpec, opts: argparse.Namespace, logdir: Path, log: Callable[[str], None]
) -> FindMax:
    """Ramp the rate geometrically until p99 fails, then bisect (bounded in time).

    Two criteria are tracked on the same steps: p99 <= limit with no errors; and that plus
    every accepted mail delivered within ``--deliver-within`` seconds of its 2xx. The second
    is bisected too when it fails below the first.
    """
    found = FindMax(spec=base)
    started = trio.current_time()
    deadline = started + opts.find_max_budget
    limits = RunLimits(
        drain_timeout=opts.deliver_within + 1.0,
        drain_stall=opts.deliver_within + 1.0,
        start_timeout=opts.start_timeout,
        stop_timeout=15.0,
        hurry_stop=True,
    )
    tried: set[float] = set()

    async def step(rate: float) -> Step:
        spec = replace(base, rate=rate, duration=opts.find_max_duration)
        try:
            result = await run_one(spec, opts, logdir, limits)
        except Exception as exc:
            result = RunResult(spec=spec, failed=describe_error(exc))
        judged = judge(result, opts)
        found.steps.append(judged)
        tried.add(rate)
        delivery = (
            ""
            if judged.delivery_ok is None
            else f", delivery {'ok' if judged.delivery_ok else 'FAIL'}"
        )
        log(
            f"  {base.target} [{base.sink_label}] {rate:g} req/s: p99 {result.p99_ms:,.1f} ms, "
            f"errors {result.error_count}, latency {'ok' if judged.latency_ok else 'FAIL'}"
            f"{delivery} ({judged.why})"
        )
        return judged

    rate = opts.find_max_start
    while trio.current_time() < deadline and rate <= opts.find_max_limit:
        judged = await step(rate)
        if not judged.latency_ok:
            break
        rate = _round_rate(rate * opts.find_max_factor)
    criteria: list[Callable[[], tuple[float | None, float | None]]] = [
        lambda: found.latency,
        lambda: found.with_delivery,
    ]
    for bounds in criteria if base.delivers else criteria[:1]:
        while trio.current_time() < deadline:
            lo, hi = bounds()
            if hi is None or (lo is not None and hi - lo <= opts.find_max_resolution):
                break
            mid = _round_rate(((lo or 0.0) + hi) / 2)
            if mid in tried or mid >= hi:
                break
            await step(mid)
    found.seconds = trio.current_time() - started
    return found


# --------------------------------------------------------------------------- report

COLUMNS = (
    "target",
    "sink",
    "setup",
    "req/s",
    "requests",
    "errors",
    "p50 ms",
    "p99 ms",
    "max ms",
    "achieved req/s",
    "delivered",
    "lost after 2xx",
    "dups",
    "drain s",
    "mails/s",
    "peak RSS MiB",
    "CPU s",
    "others' CPU s",
)
FIND_COLUMNS = (
    "target",
    "sink",
    "setup",
    "max req/s: p99 ok",
    "max req/s: p99 ok + delivered in time",
    "lowest failing req/s (why)",
    "steps",
    "search s",
)


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _int(value: int | None) -> str:
    return "-" if value is None else str(value)


def table_rows(results: Sequence[RunResult]) -> list[list[str]]:
    rows = []
    for r in results:
        s = r.spec
        target = s.target if s.store == "memory" else f"{s.target} ({s.store})"
        head = [target, s.sink_label, s.setup, _num(s.rate, 0)]
        if r.failed is not None:
            rows.append([*head, *(["-"] * (len(COLUMNS) - len(head) - 1)), "failed"])
            continue
        rows.append(
            [
                *head,
                str(r.requests),
                str(r.error_count),
                _num(r.p50_ms),
                _num(r.p99_ms),
                _num(r.max_ms),
                _num(r.achieved_rps),
                _int(r.delivered),
                _int(r.lost),
                _int(r.duplicates),
                _num(r.drain_s, 2),
                _num(r.mails_per_s),
                _num(r.peak_rss_mib),
                _num(r.cpu_s, 2),
                _num(r.other_cpu_s, 1),
            ]
        )
    return rows


def format_table(columns: Sequence[str], rows: list[list[str]], style: str) -> str:
    """Render rows as aligned text, a Markdown table, or a reStructuredText grid table."""
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    left = {"target", "sink", "setup", "lowest failing req/s (why)"}

    def cells(values: Sequence[str]) -> list[str]:
        return [
            v.ljust(w) if c in left else v.rjust(w)
            for v, w, c in zip(values, widths, columns, strict=True)
        ]

    def bordered(values: Sequence[str]) -> str:
        return "| " + " | ".join(cells(values)) + " |"

    if style == "markdown":
        rule = [
            "-" * w if c in left else "-" * (w - 1) + ":"
            for w, c in zip(widths, columns, strict=True)
        ]
        return "\n".join(
            [bordered(columns), "| " + " | ".join(rule) + " |"] + [bordered(r) for r in rows]
        )
    if style == "rst":
        border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
        out = [border, bordered(columns), border.replace("-", "=")]
        for row in rows:
            out += [bordered(row), border]
        return "\n".join(out)
    plain = [list(columns), ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(cells(r)).rstrip() for r in plain)


def _max_text(found: FindMax, bounds: tuple[float | None, float | None], opts: Any) -> str:
    lo, hi = bounds
    if lo is None:
        return f"< {min((s.result.spec.rate for s in found.steps), default=0):g}"
    if hi is None:
        return f">= {lo:g} (not reached)"
    return f"{lo:g}"


def find_rows(found_list: Sequence[FindMax], opts: argparse.Namespace) -> list[list[str]]:
    rows = []
    for found in found_list:
        s = found.spec
        head = [s.target, s.sink_label, s.setup]
        if found.failed:
            rows.append([*head, "-", "-", f"failed: {found.failed}"[:60], "0", "0"])
            continue
        _, hi = found.latency
        failing = next((st for st in found.steps if st.result.spec.rate == hi), None)
        why = f"{hi:g} ({failing.why})" if failing is not None and hi is not None else "-"
        with_delivery = _max_text(found, found.with_delivery, opts) if s.delivers else "n/a"
        rows.append(
            [
                *head,
                _max_text(found, found.latency, opts),
                with_delivery,
                why,
                str(len(found.steps)),
                f"{found.seconds:.0f}",
            ]
        )
    return rows


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = ["trimail", "quart", "quart-trio", "hypercorn", "trio", "fastapi", "starlette"]
    names += ["fastapi-mail", "aiosmtplib", "uvicorn", "aiosmtpd"]
    found = []
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{name} {version(name)}")
    return ", ".join(found) + f"; uvicorn runs {uvicorn_flavour()}"


def machine_description() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for text_line in Path("/proc/cpuinfo").read_text().splitlines():
            if text_line.startswith("model name"):
                model = text_line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for text_line in Path("/proc/meminfo").read_text().splitlines():
            if text_line.startswith("MemTotal:"):
                memory = f", {int(text_line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    return (
        f"CPU: {model}, {usable} usable cores (of {os.cpu_count()}){memory}\n"
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}\n{versions()}"
    )


LEGEND = """\
Each row: a fresh sink and server, an open-loop load at a constant rate (latency runs from each
request's scheduled send time to its response or failure); errors are non-2xx answers,
exceptions and timeouts. achieved req/s: 2xx answers from the first scheduled request to the
last 2xx. delivered: messages the sink accepted by the end of the drain (bounded wait for every
accepted mail); lost after 2xx: requests answered 2xx whose mail had not arrived by then; dups:
requests whose mail arrived more than once (counted after shutdown); drain s: last 2xx answer
to last delivery; mails/s: delivered / (first scheduled request to last delivery). peak RSS: sum
over the server's process tree, sampled every 0.1 s; CPU s: user+system time of that tree during
load and drain; others' CPU s: CPU time the rest of the machine (not the server, the sink or the
load driver) used meanwhile, from /proc/stat: other people's work competing for the same cores.
Before each load, --warmup requests (not measured) warm the server up. The ceiling sends
nothing, so the sink mode does not apply to it."""


def print_notes(results: Sequence[RunResult]) -> None:
    for r in results:
        s = r.spec
        name = f"{s.target} [{s.sink_label}, {s.setup}] {s.rate:g} req/s"
        if s.purpose:
            name += f" ({s.purpose})"
        for note in r.notes if r.failed is None else [f"FAILED: {r.failed}"]:
            print(f"- {name}: {note}")


def describe_error(exc: BaseException) -> str:
    while isinstance(getattr(exc, "exceptions", None), tuple) and len(exc.exceptions) == 1:  # type: ignore[attr-defined]
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- suite and targets


def base_spec(target: str, sink: str, opts: argparse.Namespace, **changes: Any) -> RunSpec:
    spec = RunSpec(
        target=target,
        sink=sink,
        rate=opts.rate,
        duration=opts.duration,
        workers=opts.workers,
        queue_size=opts.queue_size,
        naive_threads=opts.naive_threads or opts.workers,
        hypercorn_workers=opts.hypercorn_workers if target in ("trimail", "ceiling") else 0,
        uvicorn_workers=opts.uvicorn_workers,
        switch_interval=opts.switch_interval,
    )
    return replace(spec, **changes)


def matrix_specs(opts: argparse.Namespace, targets: Sequence[str]) -> list[RunSpec]:
    specs = []
    for target in targets:
        for sink in opts.sinks:
            stores = opts.stores if target == "trimail" else ["memory"]
            specs.extend(base_spec(target, sink, opts, store=store) for store in stores)
            if target == "ceiling":
                break  # it never talks to the sink: one row is the same as three
    return specs


def check_specs(opts: argparse.Namespace) -> list[RunSpec]:
    """The suite's extra trimail runs, one per target that the matrix does not show."""
    one = {"hypercorn_workers": 0}
    return [
        base_spec(
            "trimail",
            "slow",
            opts,
            rate=300.0,
            workers=256,
            queue_size=10_000,
            purpose="p99 at 300 req/s and delivery rate, 1 s provider",
            **one,
        ),
        base_spec(
            "trimail",
            "slow",
            opts,
            rate=300.0,
            workers=256,
            queue_size=10_000,
            hypercorn_workers=opts.suite_processes,
            purpose="the same, several processes",
        ),
        base_spec(
            "trimail",
            "slow",
            opts,
            rate=150.0,
            workers=64,
            queue_size=10_000,
            purpose="delivery rate with W=64, 1 s provider",
            **one,
        ),
        base_spec(
            "trimail",
            "slow",
            opts,
            rate=opts.overload_rate,
            duration=opts.overload_duration,
            workers=8,
            queue_size=100,
            purpose="overload: 8 mails/s of capacity, queue 100",
            **one,
        ),
    ]


def find_specs(opts: argparse.Namespace, suite: bool) -> list[RunSpec]:
    if not suite:
        specs = []
        for target in opts.targets:
            for sink in opts.sinks:
                specs.append(base_spec(target, sink, opts))
                if target == "ceiling":
                    break
        return specs
    one = {"hypercorn_workers": 0, "workers": 256, "queue_size": 10_000}
    return [
        base_spec("trimail", "instant", opts, **one),
        base_spec("trimail", "instant", opts, **{**one, "hypercorn_workers": opts.suite_processes}),
        base_spec("ceiling", "instant", opts, hypercorn_workers=0),
        base_spec("fastapi-mail", "instant", opts, uvicorn_workers=1),
        base_spec("trimail", "slow", opts, **one),
    ]


def evaluate_targets(
    matrix: Sequence[RunResult],
    checks: Sequence[RunResult],
    found: Sequence[FindMax],
    opts: argparse.Namespace,
) -> list[str]:
    """trimail's stated targets, each MET or MISSED with the measured figure and the bar."""
    lines: list[str] = []

    def verdict(ok: bool | None, text: str) -> None:
        lines.append(f"{'n/a   ' if ok is None else 'MET   ' if ok else 'MISSED'} {text}")

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}x" if a and b else "n/a"

    def pick(results: Sequence[RunResult], **want: Any) -> RunResult | None:
        for r in results:
            if r.failed is None and all(getattr(r.spec, k) == v for k, v in want.items()):
                return r
        return None

    def maxima(target: str, sink: str, procs: int | None = None) -> list[FindMax]:
        return [
            f
            for f in found
            if f.spec.target == target
            and f.spec.sink == sink
            and (procs is None or f.spec.hypercorn_workers == procs)
            and f.failed is None
        ]

    for r300 in checks:
        s = r300.spec
        if s.target == "trimail" and s.sink == "slow" and s.rate == 300 and r300.failed is None:
            verdict(
                r300.p99_ms <= 20 and r300.error_count == 0,
                f"p99 <= 20 ms at 300 req/s, 1 s provider ({s.setup}): p99 "
                f"{r300.p99_ms:.1f} ms, {r300.error_count} errors "
                f"({ratio(r300.p99_ms, 20.0)} the bar)",
            )
    ceiling = maxima("ceiling", "instant")
    ceiling_max = ceiling[0].latency[0] if ceiling else None
    for sink in ("instant", "slow"):
        for f in maxima("trimail", sink, 0):
            value = f.latency[0]
            bar = 0.8 * ceiling_max if ceiling_max else None
            verdict(
                None if value is None or bar is None else value >= bar,
                f"max rate with p99 <= {opts.p99_limit_ms:g} ms >= 0.8 x ceiling's ({sink} "
                f"provider): trimail {value} req/s vs ceiling {ceiling_max} req/s "
                f"(bar {bar}; {ratio(value, ceiling_max)} of the ceiling; the ceiling sends "
                "nothing, so its maximum is the same for every provider)",
            )
    fastapi = maxima("fastapi-mail", "instant")
    fastapi_max = fastapi[0].with_delivery[0] if fastapi else None
    candidates = [(f.with_delivery[0], f.spec.setup) for f in maxima("trimail", "instant")]
    candidates = [c for c in candidates if c[0] is not None]
    if candidates and fastapi_max is not None:
        value, setup = max(candidates)
        verdict(
            value >= 1.2 * fastapi_max,
            f"max rate with p99 <= {opts.p99_limit_ms:g} ms and every mail delivered within "
            f"{opts.deliver_within:g} s (instant) >= 1.2 x fastapi-mail's: trimail {value:g} "
            f"req/s ({setup}) vs fastapi-mail {fastapi_max:g} req/s (bar {1.2 * fastapi_max:g}; "
            f"{ratio(value, fastapi_max)})",
        )
    for r in [*matrix, *checks]:
        s = r.spec
        if s.target == "trimail" and s.sink == "slow" and r.failed is None and s.workers >= 1:
            if s.purpose.startswith("overload"):
                continue
            bar = 0.9 * min(s.rate, s.workers * max(1, s.hypercorn_workers))
            steady = r.steady_mails_per_s
            value = r.mails_per_s if math.isnan(steady) else steady
            verdict(
                value >= bar,
                f"1 s provider, {s.setup}, {s.rate:g} req/s: {steady:.1f} mails/s delivered "
                f"in steady state (overall, with the first second's wait: {r.mails_per_s:.1f}) "
                f">= 0.9 x min(rate, W) = {bar:.1f} ({ratio(value, bar / 0.9)} of min(rate, W))",
            )
    flaky = pick(matrix, target="trimail", sink="flaky")
    if flaky is not None:
        verdict(
            flaky.lost == 0 and flaky.duplicates == 0,
            f"flaky provider: {flaky.lost} lost after 2xx, {flaky.duplicates} duplicates "
            f"({flaky.ok} accepted)",
        )
    over = next((r for r in checks if r.spec.purpose.startswith("overload")), None)
    if over is not None and over.failed is None:
        growth = (over.rss_late_mib - over.rss_early_mib) / over.rss_early_mib
        verdict(
            over.status_503 > 0
            and over.status_503_retry_after == over.status_503
            and over.p99_ms < 200
            and growth <= 0.10,
            f"overload ({over.spec.rate:g} req/s into 8 mails/s, queue 100, "
            f"{over.spec.duration:g} s): {over.status_503} x 503, "
            f"{over.status_503_retry_after} with Retry-After, p99 {over.p99_ms:.1f} ms (< 200), "
            f"RSS {over.rss_early_mib:.1f} -> {over.rss_late_mib:.1f} MiB ({growth:+.1%}, "
            "flat if within +10%)",
        )
    return lines


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset")
    parser.add_argument("--sinks", default=",".join(SINKS), help="comma-separated sink modes")
    parser.add_argument("--rate", type=float, default=150.0, help="offered load, requests/s")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per run")
    parser.add_argument(
        "--workers", type=int, default=256, help="trimail delivery workers (per process)"
    )
    parser.add_argument(
        "--queue-size", type=int, default=10_000, help="trimail queue capacity (per process)"
    )
    parser.add_argument(
        "--naive-threads", type=int, default=0, help="naive SMTP threads (0: --workers)"
    )
    parser.add_argument(
        "--hypercorn-workers",
        type=int,
        default=0,
        help="run trimail and the ceiling under `hypercorn -w K` (0: one process)",
    )
    parser.add_argument("--uvicorn-workers", type=int, default=1, help="fastapi-mail processes")
    parser.add_argument(
        "--stores", default="memory", help="trimail's stores: memory, sqlite, postgresql"
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="trimail (one process): sys.setswitchinterval in seconds (default: Python's 0.005)",
    )
    parser.add_argument(
        "--py-spy", action="store_true", help="profile each server during its load (py-spy)"
    )
    parser.add_argument(
        "--py-spy-gil",
        action="store_true",
        help="with --py-spy: only samples of the thread holding the GIL",
    )
    parser.add_argument(
        "--slow-delay", "--delay", type=float, default=1.0, help="slow sink: seconds per mail"
    )
    parser.add_argument("--fail-every", type=int, default=10, help="flaky sink: 451 every n-th")
    parser.add_argument(
        "--warmup",
        type=int,
        default=100,
        help="requests sent (4 at a time, not measured) before each run's load",
    )
    parser.add_argument("--max-in-flight", type=int, default=1000, help="client concurrency cap")
    parser.add_argument("--timeout", type=float, default=20.0, help="per-request timeout, s")
    parser.add_argument(
        "--drain-timeout", type=float, default=60.0, help="max wait for accepted mails, s"
    )
    parser.add_argument("--start-timeout", type=float, default=30.0, help="server readiness wait")
    parser.add_argument("--stop-timeout", type=float, default=30.0, help="SIGTERM grace, s")
    group = parser.add_argument_group("find-max")
    group.add_argument(
        "--find-max", action="store_true", help="search the highest rate per target and sink"
    )
    group.add_argument("--find-max-start", type=float, default=50.0, help="first rate")
    group.add_argument("--find-max-factor", type=float, default=2.0, help="ramp multiplier")
    group.add_argument("--find-max-limit", type=float, default=3200.0, help="highest rate tried")
    group.add_argument(
        "--find-max-resolution", type=float, default=25.0, help="bisect until this close, req/s"
    )
    group.add_argument(
        "--find-max-duration", type=float, default=10.0, help="seconds of load per step"
    )
    group.add_argument(
        "--find-max-budget", type=float, default=240.0, help="seconds per search (bounded)"
    )
    group.add_argument("--p99-limit-ms", type=float, default=200.0, help="p99 bar, ms")
    group.add_argument(
        "--deliver-within",
        type=float,
        default=2.0,
        help="delivery bar: every accepted mail at the sink within this many s of its 2xx",
    )
    group = parser.add_argument_group("suite")
    group.add_argument(
        "--suite",
        choices=["full"],
        help="the whole comparison: matrix, trimail checks, find-max, and the target verdicts",
    )
    group.add_argument(
        "--suite-processes", type=int, default=2, help="hypercorn -w for trimail's 2nd find-max"
    )
    group.add_argument("--overload-rate", type=float, default=150.0, help="overload run, req/s")
    group.add_argument("--overload-duration", type=float, default=30.0, help="overload run, s")
    style = parser.add_mutually_exclusive_group()
    style.add_argument(
        "--markdown", dest="style", action="store_const", const="markdown", help="Markdown table"
    )
    style.add_argument(
        "--rst", dest="style", action="store_const", const="rst", help="reStructuredText grid table"
    )
    parser.set_defaults(style="text")
    opts = parser.parse_args(argv)
    opts.targets = [t.strip() for t in opts.targets.split(",") if t.strip()]
    opts.sinks = [s.strip() for s in opts.sinks.split(",") if s.strip()]
    opts.stores = [s.strip() for s in opts.stores.split(",") if s.strip()]
    if set(opts.stores) - {"memory", "sqlite", "postgresql"} or not opts.stores:
        parser.error("--stores must name some of memory, sqlite, postgresql")
    if set(opts.targets) - set(TARGETS) or not opts.targets:
        parser.error(f"--targets must name some of {', '.join(TARGETS)}")
    if set(opts.sinks) - set(SINKS) or not opts.sinks:
        parser.error(f"--sinks must name some of {', '.join(SINKS)}")
    if opts.rate <= 0 or opts.duration <= 0 or opts.slow_delay < 0 or opts.workers < 1:
        parser.error("--rate and --duration must be > 0, --slow-delay >= 0, --workers >= 1")
    if opts.find_max_start <= 0 or opts.find_max_factor <= 1 or opts.find_max_budget <= 0:
        parser.error("--find-max-start and --find-max-budget must be > 0, --find-max-factor > 1")
    return opts


def stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def amain(opts: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the benchmark; SIGTERM cancels it (Ctrl-C raises KeyboardInterrupt), and either way
    every subprocess is stopped by the ``finally`` blocks of :func:`managed_process`."""
    code = 143
    async with trio.open_nursery() as nursery:

        async def cancel_on_sigterm() -> None:
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    stderr("SIGTERM: stopping")
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(cancel_on_sigterm)
        code = await run_benchmark(opts, argv)
        nursery.cancel_scope.cancel()
    return code


async def run_matrix(
    specs: Sequence[RunSpec], opts: argparse.Namespace, logdir: Path
) -> list[RunResult]:
    limits = RunLimits(
        drain_timeout=opts.drain_timeout,
        drain_stall=max(10.0, 5 * opts.slow_delay),
        start_timeout=opts.start_timeout,
        stop_timeout=opts.stop_timeout,
    )
    results = []
    for spec in specs:
        stderr(f"running {spec.target} [{spec.sink_label}, {spec.setup}] at {spec.rate:g} req/s")
        if spec.target == "trimail" and importlib.util.find_spec("trimail") is None:
            result = RunResult(spec=spec, failed="trimail is not importable")
        else:
            try:
                result = await run_one(spec, opts, logdir, limits)
            except Exception as exc:
                result = RunResult(spec=spec, failed=describe_error(exc))
        results.append(result)
    return results


async def run_benchmark(opts: argparse.Namespace, argv: Sequence[str]) -> int:
    began = time.time()
    print("reproduce: python benchmarks/bench.py " + shlex.join(argv))
    print(machine_description())
    print(f"load average at start: {load_average()}")
    others = await trio.to_thread.run_sync(busy_processes)
    print("busiest other processes at start (1 s sample):")
    print("\n".join(f"  {line}" for line in others) or "  (none above 5% cpu)")
    print(
        f"load: open loop; sink modes: instant, slow ({opts.slow_delay:g} s/mail), "
        f"flaky (451 to every {opts.fail_every}th DATA)",
        flush=True,
    )
    logdir = Path(tempfile.mkdtemp(prefix="trimail-bench-"))
    matrix: list[RunResult] = []
    checks: list[RunResult] = []
    found: list[FindMax] = []
    if not opts.find_max or opts.suite:
        matrix = await run_matrix(matrix_specs(opts, opts.targets), opts, logdir)
        print(f"\n{opts.rate:g} req/s for {opts.duration:g} s per run\n")
        print(format_table(COLUMNS, table_rows(matrix), opts.style))
        print()
        print(LEGEND)
        print()
        print_notes(matrix)
    if opts.suite:
        checks = await run_matrix(check_specs(opts), opts, logdir)
        print("\ntrimail checks\n")
        print(format_table(COLUMNS, table_rows(checks), opts.style))
        print()
        print_notes(checks)
    if opts.find_max or opts.suite:
        for spec in find_specs(opts, bool(opts.suite)):
            stderr(f"find-max {spec.target} [{spec.sink_label}, {spec.setup}]")
            try:
                found.append(await find_max(spec, opts, logdir, stderr))
            except Exception as exc:
                found.append(FindMax(spec=spec, failed=describe_error(exc)))
        print(
            f"\nfind-max: {opts.find_max_duration:g} s per step, rates from "
            f"{opts.find_max_start:g} x{opts.find_max_factor:g} until p99 fails, then bisection "
            f"to {opts.find_max_resolution:g} req/s, at most {opts.find_max_budget:g} s per search."
            f"\np99 ok: p99 <= {opts.p99_limit_ms:g} ms and no errors; delivered in time: every "
            f"accepted mail at the sink within {opts.deliver_within:g} s of its 2xx answer\n"
        )
        print(format_table(FIND_COLUMNS, find_rows(found, opts), opts.style))
        print("\nevery step:\n")
        steps = [step.result for f in found for step in f.steps]
        print(format_table(COLUMNS, table_rows(steps), opts.style))
    if opts.suite:
        print("\ntargets\n")
        print("\n".join(evaluate_targets(matrix, checks, found, opts)))
    print(f"\nload average at end: {load_average()}; took {time.time() - began:.0f} s")
    others = await trio.to_thread.run_sync(busy_processes)
    print("busiest other processes at end (1 s sample):")
    print("\n".join(f"  {line}" for line in others) or "  (none above 5% cpu)")
    print(f"server and sink logs: {logdir}")
    results = [*matrix, *checks, *(step.result for f in found for step in f.steps)]
    failed = any(r.failed for r in results) or any(f.failed for f in found)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    try:
        return trio.run(amain, opts, argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if getattr(opts, "postgres", None) is not None:
            opts.postgres.stop()


if __name__ == "__main__":
    sys.exit(main())
