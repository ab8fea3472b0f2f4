"""SMTP sink for benchmarks: holds each message for a fixed delay and reports a running count."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
import time
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

# Protocol on stdout (one line each, flushed at once), read by benchmarks/bench.py:
#   "ready <host> <port>"      once the server accepts connections
#   "delivered <n> <unix-ts>"  after the n-th message has been accepted (after the delay)
#   "stopped <n>"              on SIGTERM/SIGINT, just before exiting


class DelayedCountingHandler:
    """aiosmtpd handler that waits ``delay`` seconds in DATA, then counts the message."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.count = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # asyncio.sleep, not time.sleep: messages on different connections wait concurrently,
        # like a provider with latency rather than a serial one.
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        with self._lock:
            self.count += 1
            n = self.count
        print(f"delivered {n} {time.time():.6f}", flush=True)
        return "250 OK: queued as sink"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument(
        "--delay", type=float, default=1.0, help="seconds to wait per message (default 1.0)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Block the stop signals before the server thread starts (threads inherit the mask),
    # so that only the main thread's sigwait() below receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    handler = DelayedCountingHandler(args.delay)
    smtp_kwargs: dict[str, Any] = {"data_size_limit": 10 * 1024 * 1024, "enable_SMTPUTF8": True}
    controller = Controller(
        handler,
        hostname=args.host,
        port=args.port,
        ready_timeout=10.0,
        server_kwargs=smtp_kwargs,
    )
    controller.start()
    try:
        print(f"ready {args.host} {args.port}", flush=True)
        signal.sigwait(stop_signals)
    finally:
        controller.stop()
    print(f"stopped {handler.count}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
