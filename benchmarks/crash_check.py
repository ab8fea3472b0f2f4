"""What a crash costs: SIGKILL trimail in the middle of a flood, restart, count what arrives.

For each durable store: ``trimail serve`` with the provider down takes requests
from 8 client threads (about 300 req/s) for a few seconds and is killed with
SIGKILL at a random moment, requests in flight. Then the provider comes up
(``sink.py``, instant) and trimail starts again on the same store. The run
counts the 202 answers, the mails that arrive (by the job id in their
Message-ID), any accepted mail missing, any mail delivered twice, and the
mails delivered that no client got a 202 for (committed just before the kill).

    python benchmarks/crash_check.py [--stores sqlite,postgresql] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MAIL = {"from": "crash@example.com", "to": "sink@example.com", "subject": "crash", "text": "t"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(store: str, smtp_port: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIMAIL_")}
    env.update({"TRIMAIL_STORE": store, "TRIMAIL_SMTP_HOST": "127.0.0.1",
                "TRIMAIL_SMTP_PORT": str(smtp_port), "TRIMAIL_SMTP_SECURITY": "none",
                "TRIMAIL_RETRY_MAX_DELAY": "2", "TRIMAIL_LEASE_SECONDS": "5",
                "TRIMAIL_PORT": "0"})  # fmt: skip
    out = log.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "trimail", "serve"], env=env,
                               stdout=out, stderr=out)  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"Running on (http://[\d.:]+)", log.read_text())
        if found:
            return process, found.group(1)
        time.sleep(0.05)
    raise RuntimeError(f"trimail did not start:\n{log.read_text()}")


def check(store: str, seconds: float, workdir: Path) -> list[str]:
    smtp_port = free_port()
    first, url = serve(store, smtp_port, workdir / "first.log")
    accepted: list[str] = []
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    answer = client.post("/email/send", json=MAIL)
                except httpx.TransportError:
                    return
                if answer.status_code == 202:
                    accepted.append(answer.json()["id"])
                stop.wait(max(0.0, 8 / 300 - (time.monotonic() - started)))  # ~300 req/s in all

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(random.uniform(seconds / 2, seconds))
    first.kill()
    killed_after = len(accepted)
    stop.set()
    for thread in threads:
        thread.join(30)
    first.wait(30)

    sink_command = [sys.executable, str(HERE / "sink.py"), "--mode", "instant", "--port"]
    sink = subprocess.Popen([*sink_command, str(smtp_port)], stdout=subprocess.PIPE, text=True)
    delivered: Counter[str] = Counter()
    try:
        assert sink.stdout is not None
        sink.stdout.readline()  # "ready ..."
        restarted = time.monotonic()
        second, _ = serve(store, smtp_port, workdir / "second.log")
        try:
            deadline = time.monotonic() + 120
            while not set(accepted) <= set(delivered) and time.monotonic() < deadline:
                time.sleep(0.2)
                log = (workdir / "second.log").read_text()
                delivered = Counter(re.findall(r"job ([0-9a-f]{32}) sent", log))
            took = time.monotonic() - restarted
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(60)
    finally:
        sink.terminate()
        sink.wait(30)
    missing = len(set(accepted) - set(delivered))
    twice = sum(1 for count in delivered.values() if count > 1)
    extra = len(set(delivered) - set(accepted))
    return [store, str(killed_after), str(len(delivered)), str(missing), str(twice), str(extra),
            f"{took:.1f}"]  # fmt: skip


COLUMNS = ["store", "202s before SIGKILL", "delivered after restart", "missing", "twice",
           "delivered without a 202", "s to deliver all"]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=float, default=5.0, help="longest flood before the kill")
    opts = parser.parse_args()
    rows = []
    postgres = None
    try:
        for store in opts.stores.split(","):
            workdir = Path(tempfile.mkdtemp(prefix="trimail-crash-"))
            if store == "sqlite":
                url = f"sqlite://{workdir / 'spool.db'}"
            else:
                sys.path.insert(0, str(REPO))
                from tests.pgserver import PostgresServer, find_binaries

                binaries = find_binaries()
                if binaries is None:
                    raise SystemExit("PostgreSQL server binaries are missing")
                postgres = postgres or PostgresServer(binaries, durable=True)
                url = postgres.database()
            rows.append(check(url, opts.seconds, workdir))
            rows[-1][0] = store
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    finally:
        if postgres is not None:
            postgres.stop()
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    rule = "  ".join("=" * w for w in widths)
    print(rule)
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip())
    print(rule)
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    print(rule)
    return 0


if __name__ == "__main__":
    sys.exit(main())
