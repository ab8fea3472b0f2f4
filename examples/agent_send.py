"""Send one mail through trimail as an agent would: print the job id, or explain the refusal."""

from __future__ import annotations

import argparse
import email.utils
import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
MAX_RETRY_WAIT = 30.0  # never sleep longer than this for one Retry-After
MIN_RETRY_WAIT = 0.5  # nor shorter, so that "Retry-After: 0" does not become a busy loop


def retry_after_seconds(value: str | None, default: float = 1.0) -> float:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), within bounds."""
    value = (value or "").strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return min(max(seconds, MIN_RETRY_WAIT), MAX_RETRY_WAIT)


def describe_error(response: httpx.Response) -> str:
    """Render trimail's ``{"error": {"code", "message", "details"?}}`` body for a human."""
    try:
        error = response.json()["error"]
        lines = [f"error {response.status_code} {error['code']}: {error['message']}"]
    except (ValueError, KeyError, TypeError):
        return f"error {response.status_code}: {response.text[:500]}"
    details = error.get("details")
    if isinstance(details, list):
        for item in details:
            if isinstance(item, dict) and "field" in item:
                rule = item.get("rule", "")
                lines.append(f"  - {item['field']}: {item.get('message', '')} ({rule})")
            else:
                lines.append(f"  - {json.dumps(item)}")
    elif details is not None:
        lines.append(f"  details: {json.dumps(details)}")
    return "\n".join(lines)


def send(
    client: httpx.Client, message: dict[str, Any], attempts: int
) -> tuple[int, httpx.Response]:
    """POST the message, retrying on 503 as Retry-After asks, at most ``attempts`` times."""
    attempt = 1
    while True:
        response = client.post("/email/send", json=message)
        if response.status_code != 503 or attempt >= attempts:
            return attempt, response
        wait = retry_after_seconds(response.headers.get("Retry-After"))
        print(f"server busy (503), retrying in {wait:g} s ({attempt}/{attempts})", file=sys.stderr)
        time.sleep(wait)
        attempt += 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--to", action="append", required=True, help="recipient (repeatable)")
    parser.add_argument("--subject", required=True)
    parser.add_argument("--text", help="plain-text body")
    parser.add_argument("--html", help="HTML body")
    parser.add_argument("--from", dest="sender", help="sender; trimail's default if omitted")
    parser.add_argument("--attempts", type=int, default=4, help="tries in all when busy (503)")
    parser.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout, seconds")
    args = parser.parse_args(argv)
    if args.text is None and args.html is None:
        parser.error("give --text or --html (or both)")
    if args.attempts < 1:
        parser.error("--attempts must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    message: dict[str, Any] = {"to": args.to, "subject": args.subject}
    if args.sender:
        message["from"] = args.sender
    if args.text is not None:
        message["text"] = args.text
    if args.html is not None:
        message["html"] = args.html
    headers = {}
    if api_key := os.environ.get("TRIMAIL_API_KEY"):
        headers["Authorization"] = f"Bearer {api_key}"
    base_url = os.environ.get("TRIMAIL_URL", DEFAULT_URL)
    try:
        with httpx.Client(base_url=base_url, headers=headers, timeout=args.timeout) as client:
            attempts, response = send(client, message, args.attempts)
    except httpx.HTTPError as exc:
        print(f"could not reach trimail at {base_url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code == 202:
        print(response.json()["id"])
        return 0
    print(describe_error(response), file=sys.stderr)
    if response.status_code == 503:
        print(f"still busy after {attempts} attempts; try again later", file=sys.stderr)
    # 2: the request itself must change (4xx); 1: the server or the network failed.
    return 2 if 400 <= response.status_code < 500 else 1


if __name__ == "__main__":
    sys.exit(main())
