"""Send many mails concurrently with trio and trimail's AsyncClient; report what was accepted.

TRIMAIL_URL=http://127.0.0.1:8080 python examples/concurrent_send.py -n 100 -c 10
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

import trio

from trimail.client import DEFAULT_URL, AsyncClient
from trimail.errors import ConnectionFailed, HTTPError


async def send_all(count: int, concurrency: int, to: str) -> Counter[str]:
    results: Counter[str] = Counter()
    limiter = trio.CapacityLimiter(concurrency)
    url = os.environ.get("TRIMAIL_URL", DEFAULT_URL)
    async with AsyncClient(url, os.environ.get("TRIMAIL_API_KEY")) as client:

        async def send_one(number: int) -> None:
            async with limiter:
                try:
                    await client.send(
                        from_="Sender <sender@example.com>",
                        to=to,
                        subject=f"Concurrent test {number}",
                        text=f"Message {number} of {count}.",
                    )
                except HTTPError as exc:
                    results[exc.code] += 1
                except ConnectionFailed:
                    results["unreachable"] += 1
                else:
                    results["accepted"] += 1

        async with trio.open_nursery() as nursery:
            for number in range(1, count + 1):
                nursery.start_soon(send_one, number)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=100, help="mails to send")
    parser.add_argument("-c", "--concurrency", type=int, default=10, help="requests in flight")
    parser.add_argument("--to", default="rcpt@example.com", help="recipient of every mail")
    args = parser.parse_args()
    results = trio.run(send_all, args.count, args.concurrency, args.to)
    print(", ".join(f"{outcome}: {n}" for outcome, n in sorted(results.items())))
    return 0 if results["accepted"] == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
