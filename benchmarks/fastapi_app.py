"""What a Python user would pick instead: FastAPI + fastapi-mail, sending in BackgroundTasks.

This is the pattern fastapi-mail's documentation shows: validate the request with a pydantic
model, answer at once, and let ``BackgroundTasks`` run ``FastMail.send_message`` after the
response. fastapi-mail opens one SMTP connection per message (connect, EHLO, MAIL, RCPT,
DATA, QUIT, with aiosmtplib) and does not retry: a mail whose send fails after the 202 is lost
(the exception is logged by the server). Nothing bounds how many sends run at once.

Configuration comes from the environment, so that the app also works under the uvicorn CLI::

    FASTAPI_SMTP_HOST=127.0.0.1 FASTAPI_SMTP_PORT=8025 \
        uvicorn --app-dir benchmarks fastapi_app:app --port 8080 --no-access-log

``python benchmarks/fastapi_app.py --port 8080 --smtp-port 8025`` does the same.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from email.utils import parseaddr
from typing import Any

from fastapi import BackgroundTasks, FastAPI
from fastapi_mail import ConnectionConfig, FastMail, MessageSchema, MessageType
from pydantic import BaseModel, ConfigDict, EmailStr, Field

SMTP_HOST = os.environ.get("FASTAPI_SMTP_HOST", "127.0.0.1")
SMTP_PORT = int(os.environ.get("FASTAPI_SMTP_PORT", "8025"))

mail_config = ConnectionConfig(
    MAIL_USERNAME="",
    MAIL_PASSWORD="",
    MAIL_FROM="noreply@example.com",
    MAIL_SERVER=SMTP_HOST,
    MAIL_PORT=SMTP_PORT,
    MAIL_STARTTLS=False,
    MAIL_SSL_TLS=False,
    USE_CREDENTIALS=False,
    VALIDATE_CERTS=False,
    TIMEOUT=30,
)
mailer = FastMail(mail_config)
app = FastAPI(title="fastapi-mail baseline")


class SendRequest(BaseModel):
    """The part of trimail's request schema that the benchmark uses."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    sender: str = Field(alias="from", min_length=3)
    to: EmailStr | list[EmailStr]
    subject: str = Field(min_length=1, max_length=998)
    text: str | None = None
    html: str | None = None


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@app.post("/email/send", status_code=202)
async def send_email(body: SendRequest, background_tasks: BackgroundTasks) -> dict[str, str]:
    name, address = parseaddr(body.sender)
    message = MessageSchema(
        recipients=body.to if isinstance(body.to, list) else [body.to],
        subject=body.subject,
        body=body.html if body.html is not None else (body.text or ""),
        subtype=MessageType.html if body.html is not None else MessageType.plain,
        from_email=address or None,
        from_name=name or None,
    )
    background_tasks.add_task(mailer.send_message, message)
    return {"id": uuid.uuid4().hex, "status": "queued"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port")
    parser.add_argument("--smtp-host", default=SMTP_HOST, help="SMTP host")
    parser.add_argument("--smtp-port", type=int, default=SMTP_PORT, help="SMTP port")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = parse_args(argv)
    # The settings are read at import, so the uvicorn workers get them from the environment.
    os.environ["FASTAPI_SMTP_HOST"] = args.smtp_host
    os.environ["FASTAPI_SMTP_PORT"] = str(args.smtp_port)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    uvicorn.run(
        "fastapi_app:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
