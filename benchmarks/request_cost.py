"""What the most expensive requests cost: CPU on the event loop, CPU in threads, /healthz.

Each *shape* is a request made as costly as ``TRIMAIL_MAX_REQUEST_BYTES`` (10 MiB)
allows: many tiny JSON values, thousands of headers or recipients, a megabyte
address, 100 full attachments, ten mebibytes of one-character lines... For each,
against ``trimail serve`` and the instant sink (both processes on loopback):

- the server's CPU by thread, from ``/proc/<pid>/task/*/schedstat`` (nanoseconds):
  the main thread is the event loop; every other thread is work handed off
  (validation of large bodies, building and sending the message, the log writer);
- in a second pass, the slowest ``GET /healthz`` answer, asked every 5 ms while the
  request is handled (the probe's own requests would otherwise count as loop CPU);
- the answer's status and size.

Each pass counts until the answer arrived and, for a 202, until the sink has every mail.

First, on the fresh server, ``--uploads`` connections (200) each announce a
10 MiB body and send it slowly, 64 KiB every 50 ms, all at once; the run
reports how many were admitted and refused (503), and the server's RSS before
and at its peak over 10 s.

    python benchmarks/request_cost.py [--repeat 3] [--uploads 200] [--rst]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024
LIMIT = 10 * MiB
MAIL = {"from": "bench@example.com", "to": "sink@example.com", "subject": "cost", "text": "t"}


def _json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def shapes() -> Iterator[tuple[str, str, Callable[[], bytes]]]:
    """(name, route, body) for each shape; bodies are built lazily, each about LIMIT bytes."""
    yield "10 MiB of {}", "/email/send", lambda: b'{"x":[' + b"{}," * (LIMIT // 3 - 4) + b"{}]}"
    yield "700k unknown keys", "/email/send", lambda: b"{" + b",".join(
        b'"k%d":0' % n for n in range(700_000)) + b"}"  # fmt: skip
    yield "20k unknown fields", "/email/send", lambda: _json(
        {**MAIL, **{f"field_{n}_{'x' * 40}": 0 for n in range(20_000)}})  # fmt: skip
    yield "600k headers", "/email/send", lambda: _json(
        {**MAIL, "headers": {f"X-{n}": "v" for n in range(600_000)}})  # fmt: skip
    yield "700k reply_to", "/email/send", lambda: _json({**MAIL, "reply_to": ["a@b.cd"] * 700_000})
    yield "10 MiB address", "/email/send", lambda: _json({**MAIL, "to": "x" * (LIMIT - 200)})
    yield "5k bad addresses (batch)", "/email/batch", lambda: _json(
        [{**MAIL, "to": ["bad address " * 50] * 50}] * 100)  # fmt: skip
    yield "100 encoded-word headers", "/email/send", lambda: _json(
        {**MAIL, "headers": {f"X-{n}": "=?utf-8?q?a?= " * 70 for n in range(100)}})  # fmt: skip
    yield "batch of 100 full messages", "/email/batch", lambda: _json(
        [{**MAIL, "to": [f"u{n}@example{n}.com" for n in range(50)],
          "headers": {f"X-H{n}": "v" * 900 for n in range(100)}}] * 100)  # fmt: skip
    content = base64.b64encode(b"x" * (LIMIT * 3 // 4 // 100 - 300)).decode()
    yield "100 attachments, 10 MiB", "/email/send", lambda: _json(
        {**MAIL, "attachments": [{"filename": f"f{n}.bin", "content": content}
                                 for n in range(100)]})  # fmt: skip
    yield "10 MiB text", "/email/send", lambda: _json({**MAIL, "text": "a" * (LIMIT - 200)})
    yield "10 MiB of 1-char lines", "/email/send", lambda: _json(
        {**MAIL, "text": "a\n" * ((LIMIT - 200) // 3)})  # fmt: skip
    yield "3 MiB of é", "/email/send", lambda: _json({**MAIL, "text": "é" * (LIMIT // 7)})
    yield "text + html, 5 MiB", "/email/send", lambda: _json(
        {**MAIL, "text": "a " * (LIMIT // 8), "html": "<p>a</p>" * (LIMIT // 32)})  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds per thread id of process ``pid``."""
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            times[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError):
            continue
    return times


class HealthProbe:
    """Asks GET /healthz every 5 ms on its own connection and keeps the slowest answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                client.get("/healthz")
                self.slowest = max(self.slowest, time.perf_counter() - started)
                self._stop.wait(0.005)


def wait_line(process: subprocess.Popen[str], prefix: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(prefix):
            return line
        if not line and process.poll() is not None:
            break
    raise RuntimeError(f"no {prefix!r} line from {process.args}")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def slow_uploads(url: str, pid: int, count: int) -> list[str]:
    """``count`` concurrent 10 MiB uploads at 64 KiB per 50 ms: admitted, refused, RSS."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    head = (f"POST /email/send HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {LIMIT}\r\n\r\n").encode()  # fmt: skip
    refused = 0
    lock = threading.Lock()
    stop = threading.Event()

    def upload() -> None:
        nonlocal refused
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(head)
            sock.setblocking(False)
            sent = 0
            while sent < LIMIT and not stop.is_set():
                try:
                    if sock.recv(1024):  # an answer before the body is complete: refused
                        with lock:
                            refused += 1
                        return
                except BlockingIOError:
                    pass
                with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                    sent += sock.send(b" " * 65536)
                stop.wait(0.05)

    before = peak = rss_mib(pid)
    workers = [threading.Thread(target=upload, daemon=True) for _ in range(count)]
    for worker in workers:
        worker.start()
    for _ in range(200):  # 10 s of sampling
        peak = max(peak, rss_mib(pid))
        time.sleep(0.05)
    stop.set()
    for worker in workers:
        worker.join(30)
    return [str(count), str(count - refused), str(refused), f"{before:.0f}", f"{peak:.0f}"]


def measure(repeat: int, uploads: int) -> tuple[list[list[str]], list[str]]:
    sink_port, port = free_port(), free_port()
    sink = subprocess.Popen(
        [sys.executable, str(HERE / "sink.py"), "--mode", "instant", "--port", str(sink_port)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIMAIL_")}
    env.update({"TRIMAIL_SMTP_HOST": "127.0.0.1", "TRIMAIL_SMTP_PORT": str(sink_port),
                "TRIMAIL_SMTP_SECURITY": "none", "TRIMAIL_PORT": str(port),
                "TRIMAIL_LOG_LEVEL": "WARNING"})  # fmt: skip
    server = subprocess.Popen([sys.executable, "-m", "trimail", "serve"], env=env)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        wait_line(sink, "ready")
        for _ in range(300):
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        upload_row = slow_uploads(url, server.pid, uploads)  # first: RSS from a fresh server
        with httpx.Client(base_url=url, timeout=120) as client:

            def handle(route: str, body: bytes) -> httpx.Response:
                answer = client.post(
                    route, content=body, headers={"Content-Type": "application/json"}
                )
                if answer.status_code == 202:
                    for _ in answer.json().get("data", [None]):
                        wait_line(sink, "delivered", timeout=120)
                return answer

            for name, route, build in shapes():
                body = build()
                loop = threads = slowest = 0.0
                for _ in range(repeat):
                    before = thread_cpu(server.pid)
                    answer = handle(route, body)
                    after = thread_cpu(server.pid)
                    loop += after.get(server.pid, 0) - before.get(server.pid, 0)
                    threads += sum(cpu - before.get(tid, 0) for tid, cpu in after.items()
                                   if tid != server.pid)  # fmt: skip
                    with HealthProbe(url) as probe:
                        handle(route, body)
                    slowest = max(slowest, probe.slowest)
                mails = len(answer.json().get("data", [None])) if answer.status_code == 202 else 0
                size, status = f"{len(body) / MiB:.1f}", str(answer.status_code)
                cpu = [f"{1000 * loop / repeat:.0f}", f"{1000 * threads / repeat:.0f}"]
                rows.append([name, size, status, str(mails), str(len(answer.content)), *cpu,
                             f"{1000 * slowest:.0f}"])  # fmt: skip
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    finally:
        for process in (server, sink):
            process.terminate()
            process.wait(30)
    return rows, upload_row


COLUMNS = ["request shape", "MiB", "status", "mails", "answer bytes", "loop CPU ms",
           "thread CPU ms", "slowest /healthz ms"]  # fmt: skip


UPLOAD_COLUMNS = ["slow 10 MiB uploads", "admitted", "refused (503)", "RSS before MiB",
                  "RSS peak MiB"]  # fmt: skip


def print_table(columns: list[str], rows: list[list[str]], rst: bool) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = [[c.ljust(w) for c, w in zip(row, widths, strict=True)] for row in [columns, *rows]]
    if rst:
        rule = "  ".join("=" * w for w in widths)
        print("\n".join([rule, "  ".join(lines[0]).rstrip(), rule,
                         *("  ".join(line).rstrip() for line in lines[1:]), rule]))  # fmt: skip
    else:
        print("\n".join(" | ".join(line) for line in lines))
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="requests per shape (averaged)")
    parser.add_argument("--uploads", type=int, default=200, help="concurrent slow uploads")
    parser.add_argument("--rst", action="store_true", help="print RST tables")
    opts = parser.parse_args()
    rows, upload_row = measure(opts.repeat, opts.uploads)
    print_table(COLUMNS, rows, opts.rst)
    print_table(UPLOAD_COLUMNS, [upload_row], opts.rst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
