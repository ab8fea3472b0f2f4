"""Test doubles for code that uses trimail: an in-memory transport.

Delivery itself is tested against a real SMTP server; :class:`MemoryTransport`
is for testing what happens around it (the API, the queue, the ledger).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from .delivery.exchange import SendResult
from .delivery.message import Envelope


class MemoryTransport:
    """Records every envelope it is given instead of sending it.

    ``failures`` is a shared queue of exceptions: each send first takes one and
    raises it, if there is one. Share one instance's ``sent`` list between
    workers by passing it in, or use :meth:`factory`.
    """

    def __init__(
        self, sent: list[Envelope] | None = None, failures: deque[BaseException] | None = None
    ) -> None:
        self.sent = sent if sent is not None else []
        self.failures = failures if failures is not None else deque()
        self.closed = False
        self._lock = threading.Lock()

    @classmethod
    def factory(
        cls, sent: list[Envelope], failures: deque[BaseException] | None = None
    ) -> Callable[[], MemoryTransport]:
        """A transport factory for :func:`trimail.create_app`, all recording into ``sent``."""
        shared_failures = failures if failures is not None else deque()
        return lambda: cls(sent, shared_failures)

    @property
    def connected(self) -> bool:
        """Reusable until closed, like an open SMTP connection."""
        return not self.closed

    def send(self, envelope: Envelope) -> SendResult:
        with self._lock:
            if self.failures:
                raise self.failures.popleft()
            self.sent.append(envelope)
        return SendResult(accepted=envelope.recipients)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        pass
