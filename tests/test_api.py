"""The HTTP contract: 202 for a valid request, a JSON error naming the problem otherwise.

Requests go through the real app (startup, routes, shutdown) to a real SMTP
server; every refused request is checked to have produced no mail.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import pytest
import trio

from trimail.delivery.message import Envelope
from trimail.http.app import TrimailApp, create_app
from trimail.testing import MemoryTransport

from .conftest import final_lines, open_jobs, settings_for, wait_until
from .smtpserver import SMTPTestServer

VALID = {
    "from": "Agent <agent@example.com>",
    "to": "rcpt@example.com",
    "subject": "Hi",
    "text": "x",
}


async def post(app: TrimailApp, body: Any = VALID, **kwargs: Any) -> tuple[int, Any, Any]:
    client = app.test_client()
    if "data" not in kwargs and "json" not in kwargs:
        kwargs["json"] = body
    response = await client.post("/email/send", **kwargs)
    return response.status_code, await response.get_json(), response.headers


async def test_valid_request_is_accepted_and_delivered(
    running_app: TrimailApp, smtp_server: SMTPTestServer, caplog: Any
) -> None:
    """202 with an id and status queued; the mail reaches the server with that id."""
    status, body, headers = await post(running_app)
    assert status == 202
    assert body == {"id": body["id"], "status": "queued"}
    assert headers["Location"] == f"/email/{body['id']}"
    await wait_until(lambda: len(smtp_server.received) == 1)
    assert smtp_server.received[0].message["Message-ID"] == f"<{body['id']}@example.com>"
    await wait_until(lambda: final_lines(caplog) == {body["id"]: ["sent"]})
    lines = [r.getMessage() for r in caplog.records if getattr(r, "job_id", None) == body["id"]]
    assert lines[0].endswith("accepted for 1 recipient(s)")


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (
            {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "invalid_json",
        ),
        (
            {"data": b"\xff\xfe", "headers": {"Content-Type": "application/json"}},
            400,
            "invalid_json",
        ),
        (
            {"data": b'{"a": NaN}', "headers": {"Content-Type": "application/json"}},
            400,
            "invalid_json",
        ),
        (
            {"data": b"[" * 100_000, "headers": {"Content-Type": "application/json"}},
            400,
            "invalid_json",
        ),
        (
            {"data": json.dumps(VALID).encode(), "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ({"data": json.dumps(VALID).encode()}, 415, "unsupported_media_type"),
        ({"json": {**VALID, "to": "nobody"}}, 422, "validation_error"),
        ({"json": [VALID]}, 422, "validation_error"),
    ],
)
async def test_bad_requests_get_a_json_error_and_send_nothing(
    running_app: TrimailApp,
    smtp_server: SMTPTestServer,
    kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    """Malformed, mistyped and invalid requests are refused with the documented code."""
    got_status, body, _ = await post(running_app, **kwargs)
    assert (got_status, body["error"]["code"]) == (status, code)
    assert body["error"]["message"]
    assert open_jobs(running_app) == 0
    assert smtp_server.received == []


async def test_validation_errors_name_field_and_rule(running_app: TrimailApp) -> None:
    """Each problem is listed with the request's own field name and the rule it broke."""
    body = {"to": ["ok@example.com", "bad"], "subject": "", "body": "x", "from": "x"}
    status, answer, _ = await post(running_app, body)
    assert status == 422
    details = {(d["field"], d["rule"]) for d in answer["error"]["details"]}
    assert details == {
        ("from", "invalid_address"),
        ("to[1]", "invalid_address"),
        ("subject", "empty"),
        ("body", "unknown_field"),
        ("text", "body_required"),  # in the same round as the others
    }
    unknown = next(d for d in answer["error"]["details"] if d["field"] == "body")
    assert "text" in unknown["message"]


async def test_header_errors_name_the_header(running_app: TrimailApp) -> None:
    """A bad extra header is reported as headers.<name>."""
    status, answer, _ = await post(running_app, {**VALID, "headers": {"X-A": "x\r\nBcc: e@x.io"}})
    assert status == 422
    assert answer["error"]["details"][0]["field"] == "headers.X-A"
    assert answer["error"]["details"][0]["rule"] == "control_character"


async def test_oversized_body_is_413(smtp_server: SMTPTestServer) -> None:
    """A body over TRIMAIL_MAX_REQUEST_BYTES is refused with payload_too_large."""
    app = create_app(settings_for(smtp_server, max_request_bytes=2048), setup_logging=False)
    async with app.test_app():
        status, body, _ = await post(app, {**VALID, "text": "x" * 4096})
        assert (status, body["error"]["code"]) == (413, "payload_too_large")
        assert "2048" in body["error"]["message"]
    assert smtp_server.received == []


async def test_unknown_route_and_method_are_json(running_app: TrimailApp) -> None:
    """404 and 405 answer in the same JSON error shape."""
    client = running_app.test_client()
    missing = await client.get("/nope")
    assert missing.status_code == 404
    assert (await missing.get_json())["error"]["code"] == "not_found"
    wrong = await client.get("/email/send")
    assert wrong.status_code == 405
    assert (await wrong.get_json())["error"]["code"] == "method_not_allowed"


@pytest.fixture
async def keyed_app(smtp_server: SMTPTestServer) -> Any:
    app = create_app(settings_for(smtp_server, api_keys="alpha-key,beta-key"), setup_logging=False)
    async with app.test_app():
        yield app


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer wrong", "Basic alpha-key", "alpha-key"]
)
async def test_missing_or_wrong_key_is_401(
    keyed_app: TrimailApp, smtp_server: SMTPTestServer, authorization: str | None
) -> None:
    """With keys configured, a request without a valid bearer key is refused."""
    headers = {} if authorization is None else {"Authorization": authorization}
    status, body, response_headers = await post(keyed_app, headers=headers)
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    assert response_headers["WWW-Authenticate"].startswith("Bearer")
    assert open_jobs(keyed_app) == 0


@pytest.mark.parametrize("key", ["alpha-key", "beta-key"])
async def test_any_configured_key_is_accepted(keyed_app: TrimailApp, key: str) -> None:
    """Every key in TRIMAIL_API_KEYS works."""
    status, _, _ = await post(keyed_app, headers={"Authorization": f"Bearer {key}"})
    assert status == 202


async def test_without_keys_only_loopback_is_served(running_app: TrimailApp) -> None:
    """With no keys, a request that arrived on a non-loopback address is refused."""
    client = running_app.test_client()
    response = await client.post(
        "/email/send", json=VALID, scope_base={"server": ("192.0.2.10", 8080)}
    )
    assert response.status_code == 401
    assert "TRIMAIL_API_KEYS" in (await response.get_json())["error"]["message"]


async def test_queue_full_is_503_with_retry_after(smtp_server: SMTPTestServer) -> None:
    """When the jobs not yet final fill the queue, the answer is 503 queue_full, Retry-After."""
    smtp_server.hold()
    app = create_app(settings_for(smtp_server, workers=1, queue_size=2), setup_logging=False)
    async with app.test_app():
        assert (await post(app))[0] == 202
        await wait_until(lambda: smtp_server.holding)  # the worker holds job 1
        assert (await post(app))[0] == 202  # job 2 fills the queue
        status, body, headers = await post(app)
        assert (status, body["error"]["code"]) == (503, "queue_full")
        assert int(headers["Retry-After"]) >= 1
        assert body["error"]["details"] == {"retry_after": int(headers["Retry-After"])}
        assert open_jobs(app) == 2
        smtp_server.release()
    assert len(smtp_server.received) == 2


async def test_shutting_down_is_503_with_retry_after() -> None:
    """Once shutdown began, requests get 503 shutting_down and nothing is queued."""
    sent: list[Envelope] = []
    app = create_app(
        settings_for(), transport_factory=MemoryTransport.factory(sent), setup_logging=False
    )
    async with app.test_app(), trio.open_nursery() as nursery:
        nursery.start_soon(app.drain)
        await wait_until(lambda: not app.intake.accepting)
        status, body, headers = await post(app)
        assert (status, body["error"]["code"]) == (503, "shutting_down")
        assert int(headers["Retry-After"]) >= 1
        assert body["error"]["details"] == {"retry_after": int(headers["Retry-After"])}
    assert sent == []


async def test_healthz_reports_queue_and_workers(running_app: TrimailApp) -> None:
    """GET /healthz answers 200 with depth, capacity and worker count."""
    response = await running_app.test_client().get("/healthz")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["status"] == "ok"
    assert (body["queue_depth"], body["queue_capacity"], body["workers"]) == (0, 100, 2)


async def test_unexpected_errors_are_json_500(caplog: Any) -> None:
    """A bug answers 500 internal_error in the usual shape and is logged."""
    failures: deque[BaseException] = deque()
    app = create_app(
        settings_for(), transport_factory=MemoryTransport.factory([], failures), setup_logging=False
    )

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("bug")

    async with app.test_app():
        response = await app.test_client().get("/boom")
        assert response.status_code == 500
        assert (await response.get_json())["error"]["code"] == "internal_error"
    assert any("unexpected error" in r.getMessage() for r in caplog.records)
