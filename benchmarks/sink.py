"""SMTP sink for benchmarks: an SMTP provider that is instant, slow or flaky, and tells what it got.

Modes (``--mode``; ``--delay`` and ``--fail-every`` override their parts):

- ``instant``: accepts every message at once;
- ``slow``: holds every message ``--delay`` seconds (default 1) before accepting it, many at
  once (like a provider with latency, not a serial one);
- ``flaky``: like ``instant``, but answers ``451`` to every ``--fail-every``-th DATA (default
  10th), counting every DATA it receives, retries included.

It offers PIPELINING (RFC 2920) in its EHLO reply, as Postfix, Amazon SES, Gmail and
the other large providers do (aiosmtpd reads commands in order, so it copes with a
client that pipelines); ``--no-pipelining`` turns that off.

Each accepted message is reported with the benchmark token found in it (``bench-token-...``,
which ``bench.py`` puts in the subject and the body of every request), so that the harness can
tell which accepted requests were delivered, and which were delivered more than once.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
import threading
import time
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

# Protocol on stdout (one line each, flushed at once), read by benchmarks/bench.py:
#   "ready <host> <port>"                  once the server accepts connections
#   "delivered <n> <unix-ts> <token>"      after the n-th message was accepted (after the delay);
#                                          <token> is "-" when the message carries none
#   "refused <n> <unix-ts> <token>"        after the n-th refusal (451 to DATA, flaky mode)
#   "stopped <n>"                          on SIGTERM/SIGINT, just before exiting

MODES: dict[str, tuple[float, int]] = {  # mode: (delay in seconds, fail every n-th DATA)
    "instant": (0.0, 0),
    "slow": (1.0, 0),
    "flaky": (0.0, 10),
}
TOKEN = re.compile(rb"bench-token-([A-Za-z0-9]+)")


class SinkHandler:
    """aiosmtpd handler: optionally refuses every n-th DATA, waits ``delay``, counts the rest."""

    def __init__(self, delay: float, fail_every: int = 0, pipelining: bool = True) -> None:
        self.delay = delay
        self.fail_every = fail_every
        self.pipelining = pipelining
        self.count = 0
        self.refused = 0
        self.data_commands = 0
        self._lock = threading.Lock()

    @staticmethod
    def _token(envelope: Envelope) -> str:
        content = envelope.original_content or b""
        match = TOKEN.search(content)
        return match.group(1).decode("ascii") if match else "-"

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: Any
    ) -> Any:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._lock:
            self.data_commands += 1
            refuse = self.fail_every > 0 and self.data_commands % self.fail_every == 0
            if refuse:
                self.refused += 1
                n = self.refused
        if refuse:
            print(f"refused {n} {time.time():.6f} {self._token(envelope)}", flush=True)
            return "451 4.3.0 flaky sink: try again later"
        # asyncio.sleep, not time.sleep: messages on different connections wait concurrently,
        # like a provider with latency rather than a serial one.
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        with self._lock:
            self.count += 1
            n = self.count
        print(f"delivered {n} {time.time():.6f} {self._token(envelope)}", flush=True)
        return "250 OK: queued as sink"


# Kept for code that imported the old name.
DelayedCountingHandler = SinkHandler


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument(
        "--mode", choices=sorted(MODES), default="slow", help="provider behaviour (default slow)"
    )
    parser.add_argument(
        "--delay", type=float, default=None, help="seconds to hold each message (mode's default)"
    )
    parser.add_argument(
        "--fail-every",
        type=int,
        default=None,
        help="answer 451 to every n-th DATA; 0 never (mode's default)",
    )
    parser.add_argument(
        "--no-pipelining",
        dest="pipelining",
        action="store_false",
        help="do not offer PIPELINING in the EHLO reply",
    )
    parser.add_argument(
        "--max-size", type=int, default=32 * 1024 * 1024, help="largest message in bytes"
    )
    args = parser.parse_args(argv)
    delay, fail_every = MODES[args.mode]
    args.delay = delay if args.delay is None else args.delay
    args.fail_every = fail_every if args.fail_every is None else args.fail_every
    if args.delay < 0 or args.fail_every < 0:
        parser.error("--delay and --fail-every must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Block the stop signals before the server thread starts (threads inherit the mask),
    # so that only the main thread's sigwait() below receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    handler = SinkHandler(args.delay, args.fail_every, args.pipelining)
    smtp_kwargs: dict[str, Any] = {"data_size_limit": args.max_size, "enable_SMTPUTF8": True}
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
