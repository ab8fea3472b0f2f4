"""The client's own logic (retries, idempotency keys, errors) against scripted HTTP answers.

These use httpx's MockTransport for the HTTP side only; the client is also
tested against a running trimail in test_client_e2e.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from trimail.client import AsyncClient, Client
from trimail.client import _client as client_module
from trimail.errors import ConnectionFailed, QueueFull, ValidationFailed

ACCEPTED = {"id": "a" * 32, "status": "queued"}


def scripted(*answers: httpx.Response | Exception) -> tuple[list[httpx.Request], Any]:
    """A transport that answers the requests with ``answers`` in turn and records them."""
    seen: list[httpx.Request] = []
    pending = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = pending.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return seen, handle


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", waited.append)
    return waited


def error(status: int, code: str, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": "m", **extra}})


def make(handle: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> Client:
    return Client("http://trimail.test", "secret", transport=httpx.MockTransport(handle), **kwargs)


def test_send_posts_the_message_with_auth_and_a_key(sleeps: list[float]) -> None:
    """send() maps from_ to "from", sends the bearer key and an Idempotency-Key."""
    seen, handle = scripted(httpx.Response(202, json=ACCEPTED))
    with make(handle) as client:
        job = client.send(from_="a@example.com", to="b@example.com", subject="s", text="t")
    assert job.id == ACCEPTED["id"]
    body = json.loads(seen[0].content)
    assert body == {"from": "a@example.com", "to": "b@example.com", "subject": "s", "text": "t"}
    assert seen[0].headers["Authorization"] == "Bearer secret"
    assert len(seen[0].headers["Idempotency-Key"]) == 36


def test_503_is_retried_after_retry_after_with_the_same_key(sleeps: list[float]) -> None:
    """queue_full answers are retried as Retry-After says, keeping the Idempotency-Key."""
    full = error(503, "queue_full")
    full.headers["Retry-After"] = "2"
    seen, handle = scripted(full, full, httpx.Response(202, json=ACCEPTED))
    with make(handle) as client:
        client.send({"to": "b@example.com", "subject": "s", "text": "t"})
    assert sleeps == [2, 2]
    assert len({r.headers["Idempotency-Key"] for r in seen}) == 1


def test_connection_errors_are_retried_then_reported(sleeps: list[float]) -> None:
    """A server that cannot be reached is retried max_retries times, then ConnectionFailed."""
    refused = httpx.ConnectError("refused")
    seen, handle = scripted(refused, refused, refused)
    with make(handle, max_retries=2) as client, pytest.raises(ConnectionFailed):
        client.send({"to": "b@example.com", "subject": "s", "text": "t"})
    assert len(seen) == 3
    assert len(sleeps) == 2


def test_errors_become_typed_exceptions_without_retry(sleeps: list[float]) -> None:
    """A 422 raises ValidationFailed with the details, at once."""
    details = [{"field": "to[0]", "rule": "invalid_address", "message": "m"}]
    seen, handle = scripted(error(422, "validation_error", details=details))
    with make(handle) as client, pytest.raises(ValidationFailed) as info:
        client.send({"to": "nope", "subject": "s", "text": "t"})
    assert info.value.details == details
    assert len(seen) == 1
    assert sleeps == []


def test_503_after_the_last_retry_raises_queue_full(sleeps: list[float]) -> None:
    """When retries run out the last answer is raised, with its Retry-After."""
    full = error(503, "queue_full")
    full.headers["Retry-After"] = "1"
    _, handle = scripted(full, full)
    with make(handle, max_retries=1) as client, pytest.raises(QueueFull) as info:
        client.send({"to": "b@example.com", "subject": "s", "text": "t"})
    assert info.value.retry_after == 1


def test_retry_after_is_capped(sleeps: list[float]) -> None:
    """A huge Retry-After is capped at max_retry_wait."""
    full = error(503, "shutting_down")
    full.headers["Retry-After"] = "3600"
    _, handle = scripted(full, httpx.Response(202, json=ACCEPTED))
    with make(handle, max_retry_wait=5) as client:
        client.send({"to": "b@example.com", "subject": "s", "text": "t"})
    assert sleeps == [5]


async def test_async_client_under_trio() -> None:
    """AsyncClient sends a batch and reads a status under trio."""
    jobs = {"data": [ACCEPTED, {"id": "b" * 32, "status": "queued"}]}
    status = {
        "id": "a" * 32, "status": "sent", "attempts": 1,
        "created_at": "2026-01-01T00:00:00.000+00:00",
        "updated_at": "2026-01-01T00:00:01.000+00:00",
    }  # fmt: skip
    seen, handle = scripted(httpx.Response(202, json=jobs), httpx.Response(200, json=status))
    transport = httpx.MockTransport(handle)
    async with AsyncClient("http://trimail.test", transport=transport) as client:
        queued = await client.send_batch([{"to": "x@example.com"}] * 2, idempotency_key="k1")
        assert [job.id for job in queued] == ["a" * 32, "b" * 32]
        assert (await client.status("a" * 32)).status == "sent"
    assert seen[0].headers["Idempotency-Key"] == "k1"
    assert seen[1].url.path == f"/email/{'a' * 32}"
