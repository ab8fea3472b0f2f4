"""The client for programs and agents; it needs httpx only, not the server's stack."""

from ._client import DEFAULT_URL, AsyncClient, Client, message_from

__all__ = ["DEFAULT_URL", "AsyncClient", "Client", "message_from"]
