"""trimail: an HTTP service that accepts email requests at once and delivers them over SMTP.

The public names are re-exported here; everything else is internal.
"""

from importlib.metadata import version

from .app import TrimailApp, create_app
from .client import AsyncClient, Client
from .config import Settings, SMTPSecurity, load_settings
from .dispatcher import Dispatcher
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
from .models import Attachment, Mailbox, SendRequest
from .retry import RetryPolicy
from .transport import SMTPTransport, Transport

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
