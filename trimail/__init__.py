"""trimail: an HTTP service that accepts email requests at once and delivers them over SMTP.

The public names are re-exported here; everything else is internal. The server
and delivery stack (Quart, Hypercorn, smtplib) is imported only when one of its
names is first used, so ``from trimail import Client`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from .config import Settings, SMTPSecurity, load_settings
from .errors import (
    ConfigurationError,
    ConnectionFailed,
    DeliveryError,
    HTTPError,
    PermanentDeliveryError,
    QueueFull,
    RequestError,
    ServerBusy,
    ShuttingDown,
    TransientDeliveryError,
    TrimailError,
    Unavailable,
)
from .mailbox import Mailbox
from .models import Attachment, SendRequest

if TYPE_CHECKING:
    from .client import AsyncClient, Client
    from .delivery.dispatcher import Dispatcher
    from .delivery.retry import RetryPolicy
    from .delivery.transport import SMTPTransport, Transport
    from .http.app import TrimailApp, create_app

#: Names loaded on first use, by the module that defines them.
_LAZY = {
    "AsyncClient": ".client",
    "Client": ".client",
    "Dispatcher": ".delivery.dispatcher",
    "RetryPolicy": ".delivery.retry",
    "SMTPTransport": ".delivery.transport",
    "Transport": ".delivery.transport",
    "TrimailApp": ".http.app",
    "create_app": ".http.app",
}

__all__ = [
    "AsyncClient",
    "Attachment",
    "Client",
    "ConfigurationError",
    "ConnectionFailed",
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
    "TransientDeliveryError",
    "Transport",
    "TrimailApp",
    "TrimailError",
    "Unavailable",
    "create_app",
    "load_settings",
]
__version__ = version("trimail")


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trimail' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value
