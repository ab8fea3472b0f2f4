"""Send many mails through trimail concurrently (trio + httpx) and report how many were accepted."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from typing import Any

import httpx
import trio

DEFAULT_URL = "http://127.0.0.1:8080"
MIN_RETRY_WAIT, MAX_RETRY_WAIT = 0.5, 30.0


def retry_after_seconds(value: str | None) -> float:
    """Seconds from a delta-seconds Retry-After header (1 s if absent or not a number), bounded."""
    try:
        seconds = float(value or 1)
    except ValueError:
        seconds = 1.0
    return min(max(seconds, MIN_RETRY_WAIT), MAX_RETRY_WAIT)


async def send_one(
    client: httpx.AsyncClient,
    limiter: trio.CapacityLimiter,
    message: dict[str, Any],
    attempts: int,
    outcomes: Counter[str],
) -> None:
    """Send one message (retrying a 503 up to ``attempts`` tries in all) and tally the outcome."""
    for attempt in range(1, attempts + 1):
        async with limiter:  # the slot is released while waiting out a Retry-After
            try:
                response = await client.post("/email/send", json=message)
            except httpx.HTTPError as exc:
                outcomes[type(exc).__name__] += 1
                return
        if response.status_code == 202:
            outcomes["accepted"] += 1
            return
        if response.status_code != 503 or attempt == attempts:
            try:
                code = response.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = "unknown"
            outcomes[f"{response.status_code} {code}"] += 1
            return
        await trio.sleep(retry_after_seconds(response.headers.get("Retry-After")))


async def send_all(args: argparse.Namespace) -> Counter[str]:
    headers = {}
    if api_key := os.environ.get("TRIMAIL_API_KEY"):
        headers["Authorization"] = f"Bearer {api_key}"
    limits = httpx.Limits(max_connections=args.concurrency)
    outcomes: Counter[str] = Counter()
    limiter = trio.CapacityLimiter(args.concurrency)
    async with (
        httpx.AsyncClient(
            base_url=os.environ.get("TRIMAIL_URL", DEFAULT_URL),
            headers=headers,
            limits=limits,
            timeout=args.timeout,
        ) as client,
        trio.open_nursery() as nursery,
    ):
        for i in range(1, args.count + 1):
            message: dict[str, Any] = {
                "to": args.to,
                "subject": f"{args.subject} #{i}",
                "text": f"Message {i} of {args.count}, sent by examples/concurrent_send.py.\n",
            }
            if args.sender:
                message["from"] = args.sender
            nursery.start_soon(send_one, client, limiter, message, args.attempts, outcomes)
    return outcomes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--count", type=int, default=100, help="mails to send")
    parser.add_argument("-c", "--concurrency", type=int, default=10, help="requests in flight")
    parser.add_argument("--to", default="rcpt@example.com", help="recipient of every mail")
    parser.add_argument("--from", dest="sender", help="sender; trimail's default if omitted")
    parser.add_argument("--subject", default="Concurrent test", help="subject prefix")
    parser.add_argument("--attempts", type=int, default=3, help="tries per mail when busy (503)")
    parser.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout, seconds")
    args = parser.parse_args(argv)
    if args.count < 1 or args.concurrency < 1 or args.attempts < 1:
        parser.error("--count, --concurrency and --attempts must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    outcomes = trio.run(send_all, args)
    elapsed = time.monotonic() - started
    accepted = outcomes.pop("accepted", 0)
    print(f"accepted {accepted}/{args.count} in {elapsed:.2f} s ({accepted / elapsed:.1f}/s)")
    for outcome, n in outcomes.most_common():
        print(f"  {outcome}: {n}")
    return 0 if accepted == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
