"""trimail: an HTTP service that accepts email requests at once and delivers them over SMTP.

The public names are re-exported here; everything else is internal.
"""

from .app import TrimailApp, create_app
from .config import Settings, SMTPSecurity, load_settings
from .dispatcher import Dispatcher
from .errors import (
    ConfigurationError,
    DeliveryError,
    HTTPError,
    PermanentDeliveryError,
    QueueFull,
    RequestError,
    ShuttingDown,
    TransientDeliveryError,
    TrimailError,
    Unavailable,
)
from .models import Attachment, Mailbox, SendRequest
from .retry import RetryPolicy
from .transport import SMTPTransport, Transport

__all__ = [
    "Attachment",
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
__version__ = "0.1.0"
