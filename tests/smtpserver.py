"""A real SMTP server for tests (aiosmtpd in a thread) that misbehaves on request.

Faults are scripted per SMTP stage: ``server.fail("RCPT", "451 4.3.0 try later",
times=2, match="b@")`` answers the next two RCPTs to an address containing
``b@`` with that reply. ``server.hold()`` makes DATA wait (after the whole
message arrived, before the reply; ``hold("RCPT")`` waits before the message)
until ``server.release()``; the test can
wait for ``server.holding`` to know the provider has the message.
``server.limit_connections(3)`` turns away every connection beyond three open
ones, as a provider with a per-client limit does: with ``421`` at the greeting,
or by closing it at once (``reply=None``). The server counts open connections,
their peak, the connections turned away and the QUITs. ``pipelining=True`` makes
it offer PIPELINING (RFC 2920), as large providers do.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return cast(EmailMessage, email.message_from_bytes(self.data, policy=email.policy.default))


@dataclass
class Fault:
    stage: str
    reply: str
    times: int
    match: str = ""


@dataclass
class ScriptedHandler:
    received: list[Received] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    sessions: int = 0
    held: threading.Event = field(default_factory=threading.Event)
    holding: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    hold_stage: str = "DATA"
    pipelining: bool = False
    connection_limit: int | None = None
    limit_reply: str | None = None
    open_connections: int = 0
    peak_connections: int = 0
    turned_away: int = 0
    quits: int = 0

    def __post_init__(self) -> None:
        self.held.set()  # set = not holding

    def _fault(self, stage: str, subject: str) -> str | None:
        with self.lock:
            for fault in self.faults:
                if fault.stage == stage and fault.times > 0 and fault.match in subject:
                    fault.times -= 1
                    return fault.reply
        return None

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        with self.lock:
            self.sessions += 1
        session.host_name = hostname
        if self.pipelining:  # aiosmtpd reads commands in order, so it copes; it only must say so
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self._fault("MAIL", address)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def _wait_if_held(self, stage: str) -> None:
        if self.hold_stage == stage and not self.held.is_set():
            self.holding.set()
            while not self.held.is_set():
                await asyncio.sleep(0.005)
            self.holding.clear()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        await self._wait_if_held("RCPT")
        reply = self._fault("RCPT", address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.quits += 1
        return "221 Bye"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = self._fault("DATA", ",".join(envelope.rcpt_tos))
        if reply:
            return reply
        await self._wait_if_held("DATA")
        with self.lock:
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        return "250 OK queued"


class CountingSMTP(SMTP):
    """aiosmtpd's server, counting open connections and turning away those over the limit."""

    def __init__(self, handler: ScriptedHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.scripted = handler
        self.counted = False

    def connection_made(self, transport: Any) -> None:
        if not self.counted:  # not again after STARTTLS
            self.counted = True
            with self.scripted.lock:
                self.scripted.open_connections += 1
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.counted:
            with self.scripted.lock:
                self.scripted.open_connections -= 1
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        handler = self.scripted
        with handler.lock:
            over = (
                handler.connection_limit is not None
                and handler.open_connections > handler.connection_limit
            )
            if over:  # a provider does not count a connection it turns away
                handler.turned_away += 1
                handler.open_connections -= 1
                self.counted = False
            else:
                handler.peak_connections = max(handler.peak_connections, handler.open_connections)
        if not over:
            await super()._handle_client()
            return
        if handler.limit_reply is not None:
            await self.push(handler.limit_reply)
        assert self.transport is not None
        self.transport.close()


class SMTPTestServer:
    """Runs :class:`ScriptedHandler` on 127.0.0.1 at a free port."""

    def __init__(self, port: int = 0, *, pipelining: bool = False, **kwargs: Any) -> None:
        self.handler = ScriptedHandler(pipelining=pipelining)
        self._controller = _AnyPort(self.handler, hostname="127.0.0.1", port=port, **kwargs)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self.release()
        self._controller.stop()

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self._controller.port)

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    @property
    def sessions(self) -> int:
        return self.handler.sessions

    def fail(self, stage: str, reply: str, times: int = 1, match: str = "") -> None:
        with self.handler.lock:
            self.handler.faults.append(Fault(stage, reply, times, match))

    def hold(self, stage: str = "DATA") -> None:
        """Make the next commands of ``stage`` (DATA: after the message arrived) wait."""
        self.handler.hold_stage = stage
        self.handler.held.clear()

    def release(self) -> None:
        self.handler.held.set()

    def limit_connections(
        self, limit: int, reply: str | None = "421 4.7.0 Error: too many connections"
    ) -> None:
        """Turn away connections beyond ``limit`` open ones: ``reply``, or a silent close."""
        self.handler.connection_limit = limit
        self.handler.limit_reply = reply

    @property
    def holding(self) -> bool:
        return self.handler.holding.is_set()


class _AnyPort(Controller):
    def factory(self) -> SMTP:
        return CountingSMTP(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()
