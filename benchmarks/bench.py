"""Open-loop benchmark of trimail versus a naive synchronous baseline behind a slow SMTP sink."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import trio

HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"
TARGETS = ("trimail", "naive")

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


# --------------------------------------------------------------------------- processes


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


def server_env() -> dict[str, str]:
    """Environment for child processes: unbuffered, and no TRIMAIL_* settings (e.g. API keys)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRIMAIL_", "NAIVE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.asynccontextmanager
async def managed_process(
    command: Sequence[str], *, stdout: int | IO[Any], stderr: int | IO[Any], stop_timeout: float
) -> AsyncIterator[trio.Process]:
    """Start a subprocess and make sure it is stopped (SIGTERM, then SIGKILL, by PID) on exit."""
    process = await trio.lowlevel.open_process(
        list(command), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=server_env()
    )
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            await stop_process(process, stop_timeout)


async def stop_process(process: trio.Process, timeout: float) -> tuple[int | None, float]:
    """SIGTERM ``process`` by PID, wait up to ``timeout`` s, then SIGKILL; return (code, secs)."""
    started = trio.current_time()
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(timeout):
            await process.wait()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    return process.returncode, trio.current_time() - started


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process, from /proc (None where unavailable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").rstrip()
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class SinkMonitor:
    """Follows the sink's stdout protocol (see benchmarks/sink.py) and keeps the running count."""

    def __init__(self) -> None:
        self.ready = trio.Event()
        self.count = 0
        self.last_delivery_wall: float | None = None
        self.progress = trio.Event()

    async def follow(self, stream: trio.abc.ReceiveStream) -> None:
        reader = _StreamReader(stream)
        with contextlib.suppress(ConnectionResetError, trio.ClosedResourceError):
            while True:
                words = (await reader.read_until(b"\n")).decode("utf-8", "replace").split()
                if words[:1] == ["ready"]:
                    self.ready.set()
                elif words[:1] == ["delivered"] and len(words) == 3:
                    self.count = int(words[1])
                    self.last_delivery_wall = float(words[2])
                    self.progress.set()
                    self.progress = trio.Event()
                elif words[:1] == ["stopped"] and len(words) == 2:
                    self.count = max(self.count, int(words[1]))


# --------------------------------------------------------------------------- load


@dataclass
class Outcome:
    latency: float  # seconds from the scheduled send time to the response or the failure
    completed: float  # trio clock time of the response or failure
    status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def request_body(index: int) -> bytes:
    return json.dumps(
        {
            "from": "Bench <bench@example.com>",
            "to": "rcpt@example.com",
            "subject": f"benchmark message {index}",
            "text": f"Benchmark message number {index}.\n",
        }
    ).encode()


async def run_open_loop(
    port: int, rate: float, duration: float, max_in_flight: int, timeout: float
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
        body = request_body(index)
        status: int | None = None
        error: str | None = None
        with trio.move_on_at(due + timeout) as scope:
            try:
                async with limiter:
                    status = (await client.request("POST", "/email/send", body)).status
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except Exception as exc:  # connection errors, bad responses: count them all
                error = type(exc).__name__
        if scope.cancelled_caught:
            error = "timeout"
        now = trio.current_time()
        outcomes[index] = Outcome(now - due, now, status, error)

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


# --------------------------------------------------------------------------- one target


@dataclass
class TargetResult:
    target: str
    rate: float
    requests: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    achieved_rps: float = math.nan
    delivered: int = 0
    delivered_per_s: float = math.nan
    notes: list[str] = field(default_factory=list)
    failed: str | None = None


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def server_command(
    target: str, opts: argparse.Namespace, http_port: int, smtp_port: int
) -> list[str]:
    common = ["--host", LOOPBACK, "--port", str(http_port), "--smtp-host", LOOPBACK]
    common += ["--smtp-port", str(smtp_port)]
    if target == "trimail":
        return [
            *(sys.executable, "-m", "trimail", "serve", *common),
            *("--smtp-security", "none", "--workers", str(opts.workers)),
            *("--queue-size", str(opts.queue_size), "--log-level", "WARNING"),
        ]
    threads = opts.naive_threads or opts.workers
    return [sys.executable, str(HERE / "naive_app.py"), *common, "--threads", str(threads)]


async def wait_http_ready(
    process: trio.Process, port: int, timeout: float
) -> dict[str, Any] | None:
    """Poll GET /healthz until it answers 200 (returns its JSON); fail if the process exits."""
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
                            try:
                                data = json.loads(response.body)
                            except ValueError:
                                return None
                            return data if isinstance(data, dict) else None
                await trio.sleep(0.1)
    finally:
        await client.aclose()


async def wait_for_deliveries(
    sink: SinkMonitor, expected: int, timeout: float, stall: float
) -> None:
    """Wait until the sink has ``expected`` mails, ``timeout`` passes, or ``stall`` s pass idle."""
    with trio.move_on_after(timeout):
        while sink.count < expected:
            with trio.move_on_after(stall) as idle:
                await sink.progress.wait()
            if idle.cancelled_caught:
                return


async def run_target(target: str, opts: argparse.Namespace, logdir: Path) -> TargetResult:
    result = TargetResult(target=target, rate=opts.rate)
    smtp_port, http_port = free_ports(2)
    sink_cmd = [sys.executable, str(HERE / "sink.py"), "--port", str(smtp_port)]
    sink_cmd += ["--delay", str(opts.delay)]
    sink_log_path = logdir / f"{target}-sink.log"
    server_log_path = logdir / f"{target}-server.log"
    sink = SinkMonitor()
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
            command = server_command(target, opts, http_port, smtp_port)
            async with managed_process(
                command, stdout=server_log, stderr=server_log, stop_timeout=opts.stop_timeout
            ) as server:
                try:
                    health = await wait_http_ready(server, http_port, opts.start_timeout)
                except (RuntimeError, trio.TooSlowError) as exc:
                    raise RuntimeError(
                        f"{target} did not become ready: {exc}\n"
                        f"--- {server_log_path} ---\n{log_tail(server_log_path)}"
                    ) from None
                if health is not None:
                    result.notes.append(f"healthz at start: {json.dumps(health, sort_keys=True)}")
                cpu_before = process_cpu_seconds(server.pid)
                driver_cpu_before = time.process_time()
                wall_offset = time.time() - trio.current_time()
                start, outcomes = await run_open_loop(
                    http_port, opts.rate, opts.duration, opts.max_in_flight, opts.timeout
                )
                driver_cpu = time.process_time() - driver_cpu_before
                summarize_load(result, start, outcomes)
                await wait_for_deliveries(
                    sink, result.ok, opts.drain_timeout, max(10.0, 5 * opts.delay)
                )
                result.delivered = sink.count
                if sink.count and sink.last_delivery_wall is not None:
                    elapsed = sink.last_delivery_wall - (start + wall_offset)
                    result.delivered_per_s = sink.count / elapsed if elapsed > 0 else math.nan
                cpu_after = process_cpu_seconds(server.pid)
                code, stop_secs = await stop_process(server, opts.stop_timeout)
            # Let the sink count what the server delivered while draining on SIGTERM.
            await trio.sleep(0.2)
            result.notes.append(
                f"SIGTERM -> exit code {code} in {stop_secs:.2f} s; "
                f"sink total after shutdown: {sink.count}"
            )
            if cpu_before is not None and cpu_after is not None:
                result.notes.append(
                    f"CPU during load+drain: server {cpu_after - cpu_before:.2f} s, "
                    f"load driver {driver_cpu:.2f} s"
                )
    if result.errors:
        breakdown = ", ".join(f"{kind} x{n}" for kind, n in result.errors.most_common())
        result.notes.append(f"errors: {breakdown}")
    return result


def summarize_load(result: TargetResult, start: float, outcomes: list[Outcome]) -> None:
    result.requests = len(outcomes)
    result.ok = sum(1 for o in outcomes if o.ok)
    result.errors = Counter(o.error or "unknown" for o in outcomes if not o.ok)
    latencies = sorted(o.latency * 1000 for o in outcomes)
    result.p50_ms = percentile(latencies, 50)
    result.p99_ms = percentile(latencies, 99)
    result.max_ms = latencies[-1] if latencies else math.nan
    ok_done = [o.completed for o in outcomes if o.ok]
    if ok_done and max(ok_done) > start:
        result.achieved_rps = len(ok_done) / (max(ok_done) - start)


# --------------------------------------------------------------------------- report

COLUMNS = (
    "target",
    "offered req/s",
    "requests",
    "errors",
    "p50 ms",
    "p99 ms",
    "max ms",
    "achieved req/s",
    "mails delivered",
    "delivered mails/s",
)


def _num(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def table_rows(results: Sequence[TargetResult]) -> list[list[str]]:
    rows = []
    for r in results:
        if r.failed is not None:
            rows.append([r.target, _num(r.rate, 0), *(["-"] * (len(COLUMNS) - 3)), "failed"])
            continue
        rows.append(
            [
                r.target,
                _num(r.rate, 0),
                str(r.requests),
                str(r.requests - r.ok),
                _num(r.p50_ms),
                _num(r.p99_ms),
                _num(r.max_ms),
                _num(r.achieved_rps),
                str(r.delivered),
                _num(r.delivered_per_s),
            ]
        )
    return rows


def format_table(rows: list[list[str]], style: str) -> str:
    """Render rows as aligned text, a Markdown table, or a reStructuredText grid table."""
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]

    def cells(values: Sequence[str]) -> list[str]:
        return [
            v.ljust(w) if i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]

    def bordered(values: Sequence[str]) -> str:
        return "| " + " | ".join(cells(values)) + " |"

    if style == "markdown":
        rule = ["-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
        return "\n".join(
            [bordered(COLUMNS), "| " + " | ".join(rule) + " |"] + [bordered(r) for r in rows]
        )
    if style == "rst":
        border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
        out = [border, bordered(COLUMNS), border.replace("-", "=")]
        for row in rows:
            out += [bordered(row), border]
        return "\n".join(out)
    plain = [COLUMNS, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(cells(r)) for r in plain)


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
        f"{platform.system()} {platform.release()}, trio {trio.__version__}"
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=50.0, help="offered load, requests/s")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per target")
    parser.add_argument("--delay", type=float, default=1.0, help="sink delay per mail, seconds")
    parser.add_argument("--workers", type=int, default=64, help="trimail delivery workers")
    parser.add_argument(
        "--naive-threads",
        type=int,
        default=0,
        help="SMTP threads of the naive baseline (0: same as --workers)",
    )
    parser.add_argument("--queue-size", type=int, default=1000, help="trimail queue capacity")
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help="comma-separated subset of: trimail,naive"
    )
    parser.add_argument("--max-in-flight", type=int, default=1000, help="client concurrency cap")
    parser.add_argument("--timeout", type=float, default=20.0, help="per-request timeout, s")
    parser.add_argument(
        "--drain-timeout", type=float, default=30.0, help="max wait for the sink to get the mails"
    )
    parser.add_argument("--start-timeout", type=float, default=30.0, help="server readiness wait")
    parser.add_argument("--stop-timeout", type=float, default=30.0, help="SIGTERM grace, s")
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
    unknown = set(opts.targets) - set(TARGETS)
    if unknown or not opts.targets:
        parser.error(f"--targets must name some of {', '.join(TARGETS)}")
    if opts.rate <= 0 or opts.duration <= 0 or opts.delay < 0 or opts.workers < 1:
        parser.error("--rate and --duration must be > 0, --delay >= 0, --workers >= 1")
    return opts


def describe_error(exc: BaseException) -> str:
    while isinstance(getattr(exc, "exceptions", None), tuple) and len(exc.exceptions) == 1:  # type: ignore[attr-defined]
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return f"{type(exc).__name__}: {exc}"


LEGEND = """\
Latency runs from each request's scheduled send time to its response (or failure), over all
requests; errors are non-2xx answers, exceptions and timeouts. Achieved req/s counts 2xx answers
from the first scheduled request to the last 2xx answer; delivered mails/s counts mails the sink
accepted from the first scheduled request to the last delivery."""


def trimail_available() -> bool:
    try:
        return importlib.util.find_spec("trimail.cli") is not None
    except ImportError:
        return False


async def amain(opts: argparse.Namespace) -> int:
    """Run the benchmark; SIGTERM cancels it (Ctrl-C raises KeyboardInterrupt), and either way
    every subprocess is stopped by the ``finally`` blocks of :func:`managed_process`."""
    code = 143
    async with trio.open_nursery() as nursery:

        async def cancel_on_sigterm() -> None:
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    print("SIGTERM: stopping", file=sys.stderr, flush=True)
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(cancel_on_sigterm)
        code = await run_benchmark(opts)
        nursery.cancel_scope.cancel()
    return code


async def run_benchmark(opts: argparse.Namespace) -> int:
    print(machine_description())
    print(
        f"load: open loop, {opts.rate:g} req/s for {opts.duration:g} s per target; "
        f"sink delay {opts.delay:g} s/mail; trimail workers {opts.workers}, "
        f"queue {opts.queue_size}; naive SMTP threads {opts.naive_threads or opts.workers}",
        flush=True,
    )
    results: list[TargetResult] = []
    logdir = Path(tempfile.mkdtemp(prefix="trimail-bench-"))
    for target in opts.targets:
        if target == "trimail" and not trimail_available():
            result = TargetResult(target=target, rate=opts.rate, failed="trimail is not importable")
        else:
            print(f"running {target} ...", file=sys.stderr, flush=True)
            try:
                result = await run_target(target, opts, logdir)
            except Exception as exc:
                result = TargetResult(target=target, rate=opts.rate, failed=describe_error(exc))
        results.append(result)
    print()
    print(format_table(table_rows(results), opts.style))
    print()
    print(LEGEND)
    print()
    for r in results:
        for note in r.notes if r.failed is None else [f"FAILED: {r.failed}"]:
            print(f"{r.target}: {note}")
    print(f"server and sink logs: {logdir}")
    return 0 if all(r.failed is None for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        return trio.run(amain, opts)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
