"""The SMTP connections not in use: reused most recently used first, closed when idle.

A worker takes a transport for each attempt (:meth:`ConnectionPool.take`) and
gives it back after (:meth:`~ConnectionPool.give_back`). Taking the most
recently used one keeps the number of open connections near the number of
attempts that overlap: after a burst, the connections at the bottom of the
stack stay unused and :meth:`~ConnectionPool.run` closes each once it has been
idle for ``idle_timeout`` seconds. A new transport connects on its first send,
in the worker's thread, so opening connections costs the event loop nothing.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable

import trio

from .transport import Transport

log = logging.getLogger(__name__)

#: Seconds a QUIT may take before the connection is abandoned to the operating system.
QUIT_TIMEOUT = 1.0


class ConnectionPool:
    """Idle transports by last use; see the module docstring.

    Cancellation: :meth:`run` closes idle connections until cancelled; a close
    in progress then is abandoned (its thread finishes by itself within its
    socket timeout). :meth:`aclose` is shielded and bounded by ``QUIT_TIMEOUT``.
    """

    def __init__(self, factory: Callable[[], Transport], idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self._factory = factory
        self._idle: deque[tuple[float, Transport]] = deque()  # (idle since, transport)
        self._given_back = trio.Event()

    def __len__(self) -> int:
        """Idle connections."""
        return len(self._idle)

    def take(self) -> Transport:
        """The most recently used idle transport, else a new one (it connects on first use)."""
        if self._idle:
            return self._idle.pop()[1]
        return self._factory()

    def give_back(self, transport: Transport) -> None:
        """Keep ``transport`` for reuse if it still holds a connection; else forget it."""
        if transport.connected:
            if not self._idle:
                self._given_back.set()  # run() had nothing to wait for
            self._idle.append((trio.current_time(), transport))

    async def run(self) -> None:
        """Close every connection idle for ``idle_timeout`` seconds; run until cancelled."""
        while True:
            expires = self._idle[0][0] + self.idle_timeout if self._idle else math.inf
            with trio.move_on_at(expires):
                await self._given_back.wait()
                self._given_back = trio.Event()
                continue
            now = trio.current_time()
            while self._idle and self._idle[0][0] + self.idle_timeout <= now:
                _, transport = self._idle.popleft()
                log.debug("closing an SMTP connection idle for %.0f s", self.idle_timeout)
                await _quit(transport)

    async def aclose(self) -> None:
        """Say QUIT on every idle connection, all at once, within ``QUIT_TIMEOUT``."""
        idle = [transport for _, transport in self._idle]
        self._idle.clear()
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for transport in idle:
                    nursery.start_soon(_quit, transport)


async def _quit(transport: Transport) -> None:
    with trio.move_on_after(QUIT_TIMEOUT):
        await trio.to_thread.run_sync(transport.close, abandon_on_cancel=True)
