"""The public surface of the package is exactly what ``__all__`` lists."""

from __future__ import annotations

import subprocess
import sys

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


def test_the_client_does_not_load_the_server_stack() -> None:
    """``from trimail import Client`` imports neither Quart, Hypercorn, trio nor smtplib."""
    code = (
        "import sys\n"
        "from trimail import Client, AsyncClient\n"
        "from trimail.client import Client as C\n"
        "heavy = {'quart', 'quart_trio', 'hypercorn', 'smtplib', 'trio'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
