"""Whether the SMTP provider takes connections with the configured settings.

One :class:`ProviderState` per instance. The check at start (``trimail
check`` runs the same one) and every attempt that failed before offering a
mail (connecting, TLS, AUTH: the provider or its settings are at fault, not
the message) set :attr:`ProviderState.problem`; the next attempt or check
that gets through clears it. ``/readyz`` answers 503 with the problem while
it is set. A connection turned away while others are open is the provider's
concurrency limit at work, not a problem (see :mod:`.concurrency`).
"""

from __future__ import annotations

import logging

import trio

from ..errors import DeliveryError
from .transport import Transport

log = logging.getLogger(__name__)

#: Seconds the check at start may take in all (connect, TLS, AUTH, NOOP, QUIT).
CHECK_TIMEOUT = 60.0


class ProviderState:
    """The provider's state as last seen; changes are logged once each."""

    def __init__(self) -> None:
        #: Why the provider cannot be used now (a fixed description), or None.
        self.problem: str | None = None

    def failed(self, reason: str) -> None:
        if reason != self.problem:
            log.warning("the SMTP provider cannot be used: %s (/readyz answers 503 until a "
                        "delivery gets through)", reason)  # fmt: skip
        self.problem = reason

    def succeeded(self) -> None:
        if self.problem is not None:
            log.info("the SMTP provider answers again")
        self.problem = None


def check_provider(transport: Transport) -> str:
    """Run ``transport.check()`` (blocking); a transport without one passes."""
    check = getattr(transport, "check", None)
    return check() if check is not None else "this transport has nothing to check"


async def check_at_start(transport: Transport, state: ProviderState) -> None:
    """The provider check in a thread, its verdict logged: trimail starts either way.

    Cancellation: the check's thread is abandoned (it ends within its SMTP timeouts).
    """
    with trio.move_on_after(CHECK_TIMEOUT) as scope:
        try:
            verdict = await trio.to_thread.run_sync(
                check_provider, transport, abandon_on_cancel=True
            )
        except DeliveryError as error:
            state.failed(error.reason)
            return
    if scope.cancelled_caught:
        state.failed(f"the provider check took more than {CHECK_TIMEOUT:.0f} s")
        return
    log.info("provider check passed: %s", verdict)
    state.succeeded()
