"""App factories for tests that run Hypercorn as a process (``tests.apps:crashing_app()``)."""

from __future__ import annotations

from trimail.delivery.transport import Transport
from trimail.http.app import TrimailApp, create_app


def broken_transport() -> Transport:
    """A transport factory with a bug: the dispatcher's workers cannot start."""
    raise RuntimeError("a bug in the transport factory")


def crashing_app() -> TrimailApp:
    """The app configured from TRIMAIL_*, whose delivery stops right after it starts."""
    return create_app(transport_factory=broken_transport)
