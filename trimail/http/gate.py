"""The ASGI layer in front of the Quart app: what is decided before a body is read.

For every HTTP request, in this order, each refusal answered at once with
``Connection: close`` (when a body may follow) so that nothing more is read,
before the request goes to its ``endpoints`` entry (sending) or to the app:

1. **Who**: the route's :class:`~trimail.http.access.Guard` is checked from the headers
   and addresses alone (``401``); the caller's owner id goes into the scope.
2. **How big**: a ``Content-Length`` above ``TRIMAIL_MAX_REQUEST_BYTES`` is ``413``.
3. **How much at once**: every request body is counted against one
   :class:`ByteBudget` (``TRIMAIL_MAX_INFLIGHT_BYTES``) from its first byte until
   its answer has been sent. A body of known length reserves it all up front or gets
   ``503 server_busy``; a body of unknown length (chunked) reserves as it
   arrives and waits for room, which ``TRIMAIL_REQUEST_TIMEOUT`` bounds.

And for every answer: an answer that starts before the request body was
received whole says ``Connection: close``; and sending is shielded from
cancellation. Quart-Trio cancels its request task when the body-reader task
sees the connection end, and Hypercorn closes the connection from inside that
send: unshielded, the close itself is cancelled and the connection stays open
with nobody reading it, stalling the next request on it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import trio

from ..errors import HTTPError, PayloadTooLarge, ServerBusy, Unauthorized
from .access import Access, Guard
from .requestlog import log_request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The scope key under which the caller's owner id reaches the routes.
OWNER = "trimail.owner"
#: The status logged for a request whose caller left before any answer (as nginx does).
CLIENT_CLOSED = 499
#: Seconds a caller refused for lack of room is told to wait: in-flight bodies
#: finish within a request timeout, usually within milliseconds (a guess).
SERVER_BUSY_RETRY_AFTER = 1
CLOSE = (b"connection", b"close")

_GUARDS = {
    "/email/send": Guard.API_KEY,
    "/email/batch": Guard.API_KEY,
    "/metrics": Guard.METRICS,
}


def guard_for(path: str) -> Guard:
    """The guard of the route at ``path``; job status pages need an API key too."""
    guard = _GUARDS.get(path)
    if guard is not None:
        return guard
    return Guard.API_KEY if path.startswith("/email/") else Guard.OPEN


def route_label(path: str) -> str:
    """A low-cardinality name for metrics: the route's pattern, never an id."""
    if path in _GUARDS or path in {"/healthz", "/readyz", "/openapi.json", "/docs"}:
        return path
    if path.startswith("/email/"):
        return "/email/{job_id}"
    if path.startswith("/docs/assets/"):
        return "/docs/assets/{name}"
    return "unmatched"


class ByteBudget:
    """Bytes held by request bodies in flight, across all connections, at most ``limit``.

    :meth:`try_reserve` never waits; :meth:`reserve` waits for room (one
    reservation larger than ``limit`` is let through when nothing else is held,
    so it cannot wait forever). Every reservation must be released.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = trio.Event()

    def try_reserve(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    async def reserve(self, size: int) -> None:
        """Take ``size`` bytes, waiting for room. Cancellation: nothing is taken."""
        while self.used and self.used + size > self.limit:
            await self._freed.wait()
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size
        self._freed.set()
        self._freed = trio.Event()


class Gate:
    """Wraps the app's ASGI callable; see the module docstring for what it decides."""

    def __init__(
        self,
        app: ASGIApp,
        access: Access,
        max_request_bytes: int,
        budget: ByteBudget,
        on_answer: Callable[[str, int], None],
        endpoints: Mapping[str, ASGIApp] | None = None,
        request_log: bool = True,
    ) -> None:
        self.app = app
        self.access = access
        self.max_request_bytes = max_request_bytes
        self.budget = budget
        self.on_answer = on_answer  # (route label, status) for every answer
        #: Paths answered without the app behind (trimail.http.sending: the hot path).
        self.endpoints = dict(endpoints or {})
        self.request_log = request_log  # one line per request (trimail.http.requestlog)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        exchange = _Exchange(self, scope, receive, send)
        try:
            refusal = exchange.admit()
            if refusal is not None:
                await exchange.refuse(refusal)
            else:
                app = self.endpoints.get(scope["path"], self.app)
                await app(scope, exchange.receive, exchange.send)
        finally:
            exchange.release()
            if self.request_log:
                status = exchange.status or CLIENT_CLOSED
                log_request(scope, status, time.perf_counter() - started, scope.get(OWNER))


class _Exchange:
    """One request passing through the gate: its body accounting and its answer."""

    def __init__(self, gate: Gate, scope: Scope, receive: Receive, send: Send) -> None:
        self.gate = gate
        self.scope = scope
        self._receive = receive
        self._send = send
        self.reserved = 0
        self.status: int | None = None  # of the answer, once it started
        self.length: int | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                self.length = int(value) if value.isdigit() else None
            elif name == b"transfer-encoding":
                chunked = True
        # Without a length the body may come chunked (HTTP/1.1) or in frames (HTTP/2).
        self.body_complete = not chunked and not self.length
        self.counted_as_it_comes = self.length is None and not self.body_complete

    def admit(self) -> HTTPError | None:
        """The refusal for this request, decided from its head alone; None to pass it on."""
        scope = self.scope
        try:
            scope[OWNER] = self.gate.access.check(
                guard_for(scope["path"]), scope["headers"], scope.get("server")
            )
        except Unauthorized as refusal:
            return refusal
        if self.length is not None and self.length > self.gate.max_request_bytes:
            return PayloadTooLarge(
                f"the request body is larger than {self.gate.max_request_bytes} bytes"
            )
        if self.length and not self.gate.budget.try_reserve(self.length):
            return ServerBusy(
                "trimail is holding as many request bodies as TRIMAIL_MAX_INFLIGHT_BYTES "
                "allows; retry after the delay given",
                retry_after=SERVER_BUSY_RETRY_AFTER,
            )
        self.reserved = self.length or 0
        return None

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            if self.counted_as_it_comes:
                size = len(message.get("body", b""))
                await self.gate.budget.reserve(size)
                self.reserved += size
            if not message.get("more_body", False):
                self.body_complete = True
        elif message["type"] == "http.disconnect":
            self.body_complete = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not self.body_complete and not any(name == CLOSE[0] for name, _ in headers):
                message["headers"] = [*headers, CLOSE]
            self.status = message["status"]
            self.gate.on_answer(route_label(self.scope["path"]), message["status"])
        with trio.CancelScope(shield=True):  # see the module docstring
            await self._send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.release()  # answered: the caller may send the next request at once

    def release(self) -> None:
        self.gate.budget.release(self.reserved)
        self.reserved = 0

    async def refuse(self, error: HTTPError) -> None:
        body = json.dumps({"error": error.payload()}, ensure_ascii=False).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *((name.lower().encode(), value.encode()) for name, value in error.headers().items()),
        ]
        await self.send({"type": "http.response.start", "status": error.status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})
