"""The embedded SMTP sink of ``trimail serve --dev``: every mail becomes an ``.eml`` file.

It is a real SMTP server (aiosmtpd, in its own thread) on a loopback port, so
dev mode runs the whole path, HTTP to queue to worker to smtplib to SMTP.
Each file starts with ``X-Envelope-From`` and ``X-Envelope-To`` lines, so Bcc
recipients, which never appear in the message itself, can be checked.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from aiosmtpd.controller import Controller

log = logging.getLogger(__name__)


class OutboxHandler:
    """aiosmtpd handler that writes each message into ``outbox`` atomically."""

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self._numbers = itertools.count(1)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        head = (
            f"X-Envelope-From: {envelope.mail_from}\r\n"
            f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{next(self._numbers):06d}.eml"
        partial = self.outbox / f".{name}.part"
        partial.write_bytes(head + envelope.original_content)
        partial.rename(self.outbox / name)
        log.info("dev sink wrote %s (%d recipient(s))", name, len(envelope.rcpt_tos))
        return "250 OK: written to outbox"


class DevSink:
    """A context manager running the sink on ``127.0.0.1`` (port 0: any free port)."""

    def __init__(self, outbox: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.outbox = outbox
        self.outbox.mkdir(parents=True, exist_ok=True)
        self.host = host
        self._controller = _AnyPortController(
            OutboxHandler(outbox), hostname=host, port=port, enable_SMTPUTF8=True
        )

    @property
    def port(self) -> int:
        return int(self._controller.port)

    def __enter__(self) -> DevSink:
        self._controller.start()
        log.info("dev sink listening on %s:%d, writing to %s", self.host, self.port, self.outbox)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._controller.stop()


class _AnyPortController(Controller):
    """aiosmtpd's Controller, taught to bind port 0 and report the port it got."""

    def _trigger_server(self) -> None:
        server = cast(asyncio.Server, self.server)  # bound before the trigger runs
        self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]
