"""A client for programs and agents: :class:`Client` (blocking) and :class:`AsyncClient`.

``AsyncClient`` runs under trio and asyncio alike (httpx with anyio). Both:

- raise the exception of :mod:`trimail.errors` that matches the answer's error
  ``code`` (:class:`~trimail.errors.ValidationFailed` for ``validation_error``,
  :class:`~trimail.errors.QueueFull` for ``queue_full``...), and
  :class:`~trimail.errors.ConnectionFailed` when trimail cannot be reached;
- retry connection errors and answers ``429`` and ``503`` up to ``max_retries``
  times, waiting as ``Retry-After`` says (at most ``max_retry_wait`` seconds),
  else ``0.5 * 2**n`` seconds with full jitter;
- give every :meth:`~Client.send` and :meth:`~Client.send_batch` an
  ``Idempotency-Key`` (a new UUID unless you pass one), kept across its
  retries: a retried send can never produce a second mail.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import httpx

from ..answers import Accepted, JobStatus
from ..errors import ConnectionFailed, from_answer

__all__ = ["DEFAULT_URL", "FINAL_STATUSES", "AsyncClient", "Client", "message_from"]

DEFAULT_URL = "http://127.0.0.1:8080"
RETRY_STATUSES = frozenset({429, 503})
#: The statuses a job does not leave.
FINAL_STATUSES = frozenset({"sent", "failed", "undelivered"})
#: Seconds between status polls in :meth:`Client.wait`: the first, and the longest.
FIRST_POLL, LONGEST_POLL = 0.1, 5.0


def _next_poll(poll: float) -> float:
    return min(poll * 2, LONGEST_POLL)


def message_from(message: Mapping[str, Any] | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A request body from a dict and/or keyword arguments (``from_`` stands for ``from``)."""
    body = dict(message or {})
    for name, value in fields.items():
        if value is not None:
            body["from" if name == "from_" else name] = value
    return body


class _Calls:
    """What both clients share: headers, requests, the retry decision, reading answers.

    The two clients differ only in how they wait (``time.sleep`` or ``anyio.sleep``)
    and how they do I/O; everything else is here, once.
    """

    def __init__(self, api_key: str | None, max_retries: int, max_retry_wait: float) -> None:
        self.headers = {"User-Agent": "trimail-client"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait

    def delay(self, attempt: int, answer: httpx.Response | None) -> float | None:
        """Seconds to wait before retry number ``attempt`` (1-based), or None: do not retry."""
        if attempt > self.max_retries:
            return None
        if answer is not None:
            if answer.status_code not in RETRY_STATUSES:
                return None
            retry_after = _retry_after(answer)
            if retry_after is not None:
                return min(retry_after, self.max_retry_wait)
        return random.uniform(0, min(self.max_retry_wait, 0.5 * 2 ** (attempt - 1)))

    @staticmethod
    def result(answer: httpx.Response) -> Any:
        try:
            body = answer.json()
        except ValueError:
            body = answer.text
        if answer.is_success:
            return body
        raise from_answer(answer.status_code, body, _retry_after(answer))

    @staticmethod
    def send(
        message: Mapping[str, Any] | None, key: str | None, fields: Mapping[str, Any]
    ) -> Request:
        return "POST", "/email/send", {"json": message_from(message, fields), "headers": _key(key)}

    @staticmethod
    def send_batch(messages: Sequence[Mapping[str, Any]], key: str | None) -> Request:
        body = [dict(message) for message in messages]
        return "POST", "/email/batch", {"json": body, "headers": _key(key)}

    @staticmethod
    def status(job_id: str) -> Request:
        return "GET", f"/email/{job_id}", {}


Request = tuple[str, str, dict[str, Any]]


def _key(key: str | None) -> dict[str, str]:
    """The Idempotency-Key of one call, kept across its retries: a new UUID unless given."""
    return {"Idempotency-Key": key or str(uuid.uuid4())}


def _jobs(answer: Any) -> list[Accepted]:
    return [Accepted.model_validate(job) for job in answer["data"]]


def _retry_after(answer: httpx.Response) -> int | None:
    value = answer.headers.get("Retry-After", "")
    return int(value) if value.isdigit() else None


class Client:
    """A blocking client: ``Client(base_url, api_key=...)``; use it as a context manager."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._calls = _Calls(api_key, max_retries, max_retry_wait)
        self._http = httpx.Client(
            base_url=base_url, headers=self._calls.headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, request: Request) -> Any:
        method, path, kwargs = request
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                wait = self._calls.delay(attempt, None)
                if wait is None:
                    raise ConnectionFailed(f"cannot reach trimail: {exc!r}") from exc
            else:
                wait = self._calls.delay(attempt, answer)
                if wait is None:
                    return self._calls.result(answer)
            time.sleep(wait)

    def send(
        self,
        message: Mapping[str, Any] | None = None,
        /,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Accepted:
        """Queue one email; returns the job (``.id``). Fields as in ``POST /email/send``."""
        return Accepted.model_validate(self._call(_Calls.send(message, idempotency_key, fields)))

    def send_batch(
        self, messages: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> list[Accepted]:
        """Queue 1 to 100 emails, all or none; returns the jobs in order."""
        return _jobs(self._call(_Calls.send_batch(messages, idempotency_key)))

    def status(self, job_id: str) -> JobStatus:
        """The job's status (queued, sending, retrying, sent, failed or undelivered)."""
        return JobStatus.model_validate(self._call(_Calls.status(job_id)))

    def wait(self, job_id: str, timeout: float = 60.0) -> JobStatus:
        """Poll the job's status (0.1 s, doubling up to 5 s) until it is final (sent,
        failed or undelivered) and return it; ``TimeoutError`` after ``timeout`` seconds."""
        deadline, poll = time.monotonic() + timeout, FIRST_POLL
        while True:
            job = self.status(job_id)
            if job.status in FINAL_STATUSES:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout:g} s")
            time.sleep(min(poll, left))
            poll = _next_poll(poll)


class AsyncClient:
    """The same as :class:`Client` for ``await``; works under trio and asyncio."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._calls = _Calls(api_key, max_retries, max_retry_wait)
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=self._calls.headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, request: Request) -> Any:
        method, path, kwargs = request
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                wait = self._calls.delay(attempt, None)
                if wait is None:
                    raise ConnectionFailed(f"cannot reach trimail: {exc!r}") from exc
            else:
                wait = self._calls.delay(attempt, answer)
                if wait is None:
                    return self._calls.result(answer)
            await anyio.sleep(wait)

    async def send(
        self,
        message: Mapping[str, Any] | None = None,
        /,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Accepted:
        """Queue one email; returns the job (``.id``). Fields as in ``POST /email/send``."""
        answer = await self._call(_Calls.send(message, idempotency_key, fields))
        return Accepted.model_validate(answer)

    async def send_batch(
        self, messages: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> list[Accepted]:
        """Queue 1 to 100 emails, all or none; returns the jobs in order."""
        return _jobs(await self._call(_Calls.send_batch(messages, idempotency_key)))

    async def status(self, job_id: str) -> JobStatus:
        """The job's status (queued, sending, retrying, sent, failed or undelivered)."""
        return JobStatus.model_validate(await self._call(_Calls.status(job_id)))

    async def wait(self, job_id: str, timeout: float = 60.0) -> JobStatus:
        """As :meth:`Client.wait`; cancellation stops the polling at once."""
        deadline, poll = time.monotonic() + timeout, FIRST_POLL
        while True:
            job = await self.status(job_id)
            if job.status in FINAL_STATUSES:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout:g} s")
            await anyio.sleep(min(poll, left))
            poll = _next_poll(poll)
