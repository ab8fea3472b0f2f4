"""The public surface of the package is exactly what ``__all__`` lists."""

from __future__ import annotations

import trimail


def test_public_names() -> None:
    """Pins the public API: adding or removing a name is a deliberate change."""
    assert sorted(trimail.__all__) == sorted(
        [
            "AsyncClient",
            "Attachment",
            "Client",
            "ConnectionFailed",
            "ConfigurationError",
            "DeliveryError",
            "Dispatcher",
            "HTTPError",
            "Mailbox",
            "PermanentDeliveryError",
            "QueueFull",
            "RequestError",
            "RetryPolicy",
            "SMTPSecurity",
            "SMTPTransport",
            "SendRequest",
            "ServerBusy",
            "Settings",
            "ShuttingDown",
            "Transport",
            "TransientDeliveryError",
            "TrimailApp",
            "TrimailError",
            "Unavailable",
            "create_app",
            "load_settings",
        ]
    )
    for name in trimail.__all__:
        assert getattr(trimail, name) is not None
