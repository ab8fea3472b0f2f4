"""Naive synchronous baseline: a Quart-Trio app that sends each mail over SMTP before answering."""

from __future__ import annotations

import argparse
import os
import signal
import smtplib
import sys
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import request
from quart_trio import QuartTrio

# Configuration comes from the environment so that the app also works under the hypercorn CLI:
#   NAIVE_SMTP_HOST=127.0.0.1 NAIVE_SMTP_PORT=8025 \
#       hypercorn --worker-class trio --bind 127.0.0.1:8080 benchmarks.naive_app:app
# NAIVE_SMTP_THREADS bounds concurrent SMTP sends (default 40, trio.to_thread's own default).
app = QuartTrio(__name__)
app.config.update(
    SMTP_HOST=os.environ.get("NAIVE_SMTP_HOST", "127.0.0.1"),
    SMTP_PORT=int(os.environ.get("NAIVE_SMTP_PORT", "8025")),
    SMTP_TIMEOUT=float(os.environ.get("NAIVE_SMTP_TIMEOUT", "30")),
    SMTP_THREADS=int(os.environ.get("NAIVE_SMTP_THREADS", "40")),
)
_limiter = trio.CapacityLimiter(app.config["SMTP_THREADS"])


def _error(code: str, message: str, status: int) -> tuple[dict[str, Any], int]:
    return {"error": {"code": code, "message": message}}, status


def _as_list(value: Any) -> list[str] | None:
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    return None


def build_message(payload: dict[str, Any]) -> EmailMessage:
    """Build a MIME message from a request body (raises ValueError on a bad body)."""
    sender = payload.get("from")
    to = _as_list(payload.get("to"))
    subject = payload.get("subject")
    text = payload.get("text")
    html = payload.get("html")
    if not isinstance(sender, str) or not sender:
        raise ValueError("'from' must be a non-empty string")
    if to is None:
        raise ValueError("'to' must be a non-empty string or list of strings")
    if not isinstance(subject, str):
        raise ValueError("'subject' must be a string")
    if not isinstance(text, str) and not isinstance(html, str):
        raise ValueError("one of 'text' or 'html' is required")
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain="naive.invalid")
    if isinstance(text, str):
        msg.set_content(text)
        if isinstance(html, str):
            msg.add_alternative(html, subtype="html")
    else:
        assert isinstance(html, str)
        msg.set_content(html, subtype="html")
    return msg


def send_blocking(msg: EmailMessage, host: str, port: int, timeout: float) -> None:
    """Deliver one message with a fresh SMTP connection (runs in a worker thread)."""
    with smtplib.SMTP(host, port, timeout=timeout) as smtp:
        smtp.send_message(msg)


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"status": "ok", "smtp_threads": app.config["SMTP_THREADS"]}


@app.post("/email/send")
async def send_email() -> tuple[dict[str, Any], int]:
    payload = await request.get_json(silent=True)
    if not isinstance(payload, dict):
        return _error("invalid_json", "body must be a JSON object", 400)
    try:
        msg = build_message(payload)
    except ValueError as exc:
        return _error("validation_error", str(exc), 422)
    try:
        # The naive part: the client waits for the whole SMTP exchange.
        cfg = app.config
        await trio.to_thread.run_sync(
            send_blocking,
            msg,
            cfg["SMTP_HOST"],
            cfg["SMTP_PORT"],
            cfg["SMTP_TIMEOUT"],
            limiter=_limiter,
        )
    except (OSError, smtplib.SMTPException) as exc:
        return _error("smtp_error", f"{type(exc).__name__}: {exc}", 502)
    return {"id": uuid.uuid4().hex, "status": "sent"}, 202


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port")
    parser.add_argument("--smtp-host", default=app.config["SMTP_HOST"], help="SMTP host")
    parser.add_argument("--smtp-port", type=int, default=app.config["SMTP_PORT"], help="SMTP port")
    parser.add_argument(
        "--threads", type=int, default=app.config["SMTP_THREADS"], help="max concurrent SMTP sends"
    )
    parser.add_argument("--backlog", type=int, default=1024, help="listen backlog")
    return parser.parse_args(argv)


async def _wait_for_stop_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    app.config.update(SMTP_HOST=args.smtp_host, SMTP_PORT=args.smtp_port, SMTP_THREADS=args.threads)
    _limiter.total_tokens = args.threads
    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.backlog = args.backlog
    config.accesslog = None
    config.loglevel = "WARNING"
    trio.run(lambda: serve(app, config, shutdown_trigger=_wait_for_stop_signal))
    return 0


if __name__ == "__main__":
    sys.exit(main())
