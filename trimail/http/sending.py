"""``POST /email/send`` and ``POST /email/batch``: the hot path, as a plain ASGI endpoint.

Sending is read, validate, store, answer. The gate (:mod:`trimail.http.gate`)
has authenticated the caller and bounded the body, then hands these two paths
to :class:`SendEndpoint` instead of Quart: a profile at 500 requests/s put
about a third of the CPU of a request in Quart's machinery (request and app
contexts, routing, a second task to read the body, response objects), none of
which this route needs. The endpoint reads the body in the request's own task
and answers with two ASGI messages, following the rules of every route:
errors as ``{"error": ...}`` JSON with the same codes, ``408`` when the body
is too slow, ``413`` when it is too big, ``415`` for anything but JSON, ``405``
for another method.

The request path does no I/O beyond reading the request and storing the
jobs, never talks to the SMTP server and never waits for room in the queue.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from .. import errors
from .gate import OWNER, Message, Receive, Scope, Send
from .idempotency import check_key, fingerprint
from .requestlog import JOBS
from .validation import Validate, batch_of_messages, messages, one_message

if TYPE_CHECKING:
    from .app import TrimailApp

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"
_JSON_HEADER = (b"content-type", b"application/json")
_REPLAYED = {"Idempotent-Replayed": "true"}

#: The paths served here: how to validate a body, and the 202 for the job ids.
ROUTES: dict[str, tuple[Validate, Callable[[list[str]], dict[str, Any]]]] = {
    "/email/send": (one_message, lambda ids: _accepted(ids[0])),
    "/email/batch": (batch_of_messages, lambda ids: {"data": [_accepted(i) for i in ids]}),
}


def _accepted(job_id: str) -> dict[str, str]:
    return {"id": job_id, "status": "queued"}


class SendEndpoint:
    """Answers the :data:`ROUTES` for ``app`` (its intake and store exist once it serves)."""

    def __init__(self, app: TrimailApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, body, headers = await self._answer(scope, receive)
            if status == 202:  # for the request log
                scope[JOBS] = [body["id"]] if "id" in body else [d["id"] for d in body["data"]]
        except errors.HTTPError as error:
            status, body, headers = error.status, {"error": error.payload()}, error.headers()
        except _Disconnected:
            return
        except Exception:
            log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            internal = errors.HTTPError("internal error; the request was not queued")
            status, body, headers = internal.status, {"error": internal.payload()}, {}
        await _respond(send, status, body, headers)

    async def _answer(self, scope: Scope, receive: Receive) -> Answer:
        """Validate and store; replay the answer to a known Idempotency-Key.

        A replay is answered even while shutting down: it creates nothing. With a
        durable store the 202 is sent only once the jobs are committed.
        """
        path, method = scope["path"], scope["method"]
        if method != "POST":
            raise errors.MethodNotAllowed(f"Method Not Allowed: {method} {path}", allow="POST")
        app = self.app
        head = _headers(scope)
        mimetype = head.get("content-type", "").partition(";")[0].strip().lower()
        if mimetype != JSON_TYPE:
            raise errors.UnsupportedMediaType(
                f"send the message as JSON with 'Content-Type: {JSON_TYPE}' "
                f"(got {mimetype or 'none'!r})"
            )
        body = await _read_body(
            receive, app.settings.max_request_bytes, app.settings.request_timeout
        )
        owner = scope.get(OWNER)
        key = head.get("idempotency-key")
        idempotency = None
        if key is not None:
            idempotency = (check_key(key), fingerprint(path, body))
            known = await app.store.replay(owner, key, app.clock())  # type: ignore[union-attr]
            if known is not None:
                if known.fingerprint != idempotency[1]:
                    raise errors.IdempotencyKeyReused()
                return _queued(known.answer, _REPLAYED)
        app.intake.ensure_accepting()  # refuse before spending time on parsing
        validate, answer = ROUTES[path]
        requests = await messages(body, validate, app.validation_context, app.json_values_limit)
        answer_body, replayed = await app.intake.submit(requests, owner, answer, idempotency)
        return _queued(answer_body, _REPLAYED if replayed else None)


#: An answer: status, JSON body, extra headers.
Answer = tuple[int, Any, dict[str, str]]


class _Disconnected(Exception):
    """The caller went away before its body arrived: there is nobody to answer."""


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name (the last of repeated ones)."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


async def _read_body(receive: Receive, limit: int, timeout: float) -> bytes:
    """The whole body, at most ``limit`` bytes, within ``timeout`` seconds (else 413, 408)."""
    chunks: list[bytes] = []
    size = 0
    with trio.move_on_after(timeout):
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # a chunked body (a declared length was checked at the gate)
                raise errors.PayloadTooLarge(f"the request body is larger than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    raise errors.RequestTimeout("the request body did not arrive in time")


def _queued(body: dict[str, Any], headers: dict[str, str] | None) -> Answer:
    """The 202; a single job's answer points at its status with Location."""
    headers = dict(headers or {})
    if "id" in body:
        headers["Location"] = f"/email/{body['id']}"
    return 202, body, headers


async def _respond(send: Send, status: int, body: Any, headers: dict[str, str]) -> None:
    data = json.dumps(body, ensure_ascii=False).encode()
    raw = [
        _JSON_HEADER,
        (b"content-length", str(len(data)).encode()),
        *(
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in headers.items()
        ),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
