"""Send one mail as an agent would, with trimail's client: print the job id or what to fix.

    TRIMAIL_URL=http://127.0.0.1:8080 python examples/agent_send.py --to you@example.com \
        --subject Hello --text "It works."

The client retries 503s (honouring Retry-After) and connection errors with the
same Idempotency-Key, so this script never sends the mail twice.
"""

from __future__ import annotations

import argparse
import os
import sys

from trimail.client import DEFAULT_URL, Client
from trimail.errors import ConnectionFailed, HTTPError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", action="append", required=True, help="recipient (repeatable)")
    parser.add_argument("--subject", required=True)
    parser.add_argument("--text", help="plain-text body")
    parser.add_argument("--html", help="HTML body")
    parser.add_argument("--from", dest="sender", default="Agent <agent@example.com>")
    args = parser.parse_args()

    url = os.environ.get("TRIMAIL_URL", DEFAULT_URL)
    with Client(url, os.environ.get("TRIMAIL_API_KEY")) as client:
        try:
            job = client.send(
                from_=args.sender, to=args.to, subject=args.subject, text=args.text, html=args.html
            )
        except HTTPError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            for detail in exc.details or []:
                print(
                    f"  {detail['field']}: {detail['rule']}: {detail['message']}", file=sys.stderr
                )
            return 1
        except ConnectionFailed as exc:
            print(f"trimail unreachable: {exc}", file=sys.stderr)
            return 3
    print(job.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
