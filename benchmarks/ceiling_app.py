"""The framework's ceiling: a bare Quart-Trio app that parses the JSON and answers 202.

It sends nothing and validates nothing beyond "a JSON object", so it measures what
Quart-Trio on Hypercorn's trio worker costs per request on this machine: trimail cannot
answer faster than this, whatever it does.

Run it on its own, in one process configured like ``trimail serve`` (no access log, listen
backlog 2048)::

    python benchmarks/ceiling_app.py --port 8080

or under Hypercorn with several worker processes::

    hypercorn --worker-class trio --workers 2 --backlog 2048 --bind 127.0.0.1:8080 \
        benchmarks.ceiling_app:app
"""

from __future__ import annotations

import argparse
import signal
import sys
import uuid
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import request
from quart_trio import QuartTrio

app = QuartTrio(__name__)


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@app.post("/email/send")
async def send_email() -> tuple[dict[str, Any], int]:
    payload = await request.get_json(silent=True)
    if not isinstance(payload, dict):
        return {"error": {"code": "invalid_json", "message": "body must be a JSON object"}}, 400
    return {"id": uuid.uuid4().hex, "status": "queued"}, 202


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port")
    parser.add_argument("--backlog", type=int, default=2048, help="listen backlog")
    return parser.parse_args(argv)


async def _wait_for_stop_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.backlog = args.backlog
    config.accesslog = None
    config.loglevel = "WARNING"
    trio.run(lambda: serve(app, config, shutdown_trigger=_wait_for_stop_signal))
    return 0


if __name__ == "__main__":
    sys.exit(main())
