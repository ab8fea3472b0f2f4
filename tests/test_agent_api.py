"""Job status, batches, readiness, metrics and idempotency through the real app.

Delivery goes to a real SMTP server; each test reads what the API reports.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trimail.http.app import TrimailApp, create_app

from .conftest import open_jobs, retrying, settings_for, wait_until
from .smtpserver import SMTPTestServer

MAIL = {"from": "svc@example.com", "to": "user@example.com", "subject": "Hi", "text": "Hello"}


@pytest.fixture
async def keyed_app(smtp_server: SMTPTestServer) -> Any:
    settings = settings_for(
        smtp_server, api_keys="alpha,beta", retry_base_delay=60, shutdown_grace=0.2
    )
    app = create_app(settings, setup_logging=False)
    async with app.test_app():
        yield app


def auth(key: str = "alpha", **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


async def status_of(app: TrimailApp, job_id: str, key: str = "alpha") -> tuple[int, Any]:
    response = await app.test_client().get(f"/email/{job_id}", headers=auth(key))
    return response.status_code, await response.get_json()


async def test_status_follows_a_job_to_sent(
    keyed_app: TrimailApp, smtp_server: SMTPTestServer
) -> None:
    """A job reads queued or sending while the provider holds it, then sent with 1 attempt."""
    smtp_server.hold()
    sent = await keyed_app.test_client().post("/email/send", json=MAIL, headers=auth())
    job_id = (await sent.get_json())["id"]
    status, body = await status_of(keyed_app, job_id)
    assert status == 200
    assert body["status"] in {"queued", "sending"}
    smtp_server.release()
    await wait_until(lambda: open_jobs(keyed_app) == 0)
    status, body = await status_of(keyed_app, job_id)
    assert (body["status"], body["attempts"]) == ("sent", 1)
    assert "last_error" not in body
    assert body["created_at"] <= body["updated_at"]


async def test_status_shows_retrying_with_the_last_error(
    keyed_app: TrimailApp, smtp_server: SMTPTestServer
) -> None:
    """After a 451 the job is retrying, and last_error carries the code and text."""
    smtp_server.fail("DATA", "451 4.3.0 try later")
    sent = await keyed_app.test_client().post("/email/send", json=MAIL, headers=auth())
    job_id = (await sent.get_json())["id"]
    await wait_until(lambda: retrying(keyed_app, 1))
    _, body = await status_of(keyed_app, job_id)
    assert body["status"] == "retrying"
    assert body["last_error"] == {"code": 451, "message": "451 4.3.0 try later"}


async def test_failed_job_reports_its_reason(
    keyed_app: TrimailApp, smtp_server: SMTPTestServer
) -> None:
    """A 5xx makes the job failed, with the SMTP code in last_error."""
    smtp_server.fail("DATA", "554 5.7.1 rejected")
    sent = await keyed_app.test_client().post("/email/send", json=MAIL, headers=auth())
    job_id = (await sent.get_json())["id"]
    await wait_until(lambda: open_jobs(keyed_app) == 0)
    _, body = await status_of(keyed_app, job_id)
    assert body["status"] == "failed"
    assert body["last_error"]["code"] == 554


async def test_every_recipient_refused_reports_the_reply(
    keyed_app: TrimailApp, smtp_server: SMTPTestServer
) -> None:
    """A job whose only recipient was refused at RCPT is failed with that reply as last_error."""
    smtp_server.fail("RCPT", "550 5.1.1 no such user")
    sent = await keyed_app.test_client().post("/email/send", json=MAIL, headers=auth())
    job_id = (await sent.get_json())["id"]
    await wait_until(lambda: open_jobs(keyed_app) == 0)
    _, body = await status_of(keyed_app, job_id)
    assert body["status"] == "failed"
    assert body["last_error"] == {"code": 550, "message": "550 5.1.1 no such user"}
    assert body["failed_recipients"] == {"user@example.com": "550 5.1.1 no such user"}


async def test_status_is_private_to_the_creating_key(keyed_app: TrimailApp) -> None:
    """Another API key, or an unknown id, gets 404 not_found."""
    sent = await keyed_app.test_client().post("/email/send", json=MAIL, headers=auth())
    job_id = (await sent.get_json())["id"]
    assert (await status_of(keyed_app, job_id, key="beta"))[0] == 404
    status, body = await status_of(keyed_app, "0" * 32)
    assert (status, body["error"]["code"]) == (404, "not_found")
    response = await keyed_app.test_client().get(f"/email/{job_id}")
    assert response.status_code == 401


async def test_batch_is_queued_in_order(keyed_app: TrimailApp, smtp_server: SMTPTestServer) -> None:
    """A batch answers 202 with one id per message, in order, and every mail goes out."""
    batch = [{**MAIL, "subject": f"n{n}"} for n in range(5)]
    response = await keyed_app.test_client().post("/email/batch", json=batch, headers=auth())
    assert response.status_code == 202
    jobs = (await response.get_json())["data"]
    assert [job["status"] for job in jobs] == ["queued"] * 5
    await wait_until(lambda: len(smtp_server.received) == 5)
    by_id = {
        r.message["Message-ID"].split("@")[0][1:]: r.message["Subject"]
        for r in smtp_server.received
    }
    assert [by_id[job["id"]] for job in jobs] == [f"n{n}" for n in range(5)]


async def test_batch_validation_is_all_or_nothing(
    keyed_app: TrimailApp, smtp_server: SMTPTestServer
) -> None:
    """One bad message refuses the whole batch, and the error names its index."""
    batch = [MAIL, {**MAIL, "to": "nope"}, {**MAIL, "subject": ""}]
    response = await keyed_app.test_client().post("/email/batch", json=batch, headers=auth())
    assert response.status_code == 422
    fields = [d["field"] for d in (await response.get_json())["error"]["details"]]
    assert fields == ["[1].to[0]", "[2].subject"]
    assert open_jobs(keyed_app) == 0
    assert smtp_server.received == []


@pytest.mark.parametrize(("size", "rule"), [(0, "too_short"), (101, "too_long")])
async def test_batch_size_limits(keyed_app: TrimailApp, size: int, rule: str) -> None:
    """A batch holds 1 to 100 messages."""
    response = await keyed_app.test_client().post(
        "/email/batch", json=[MAIL] * size, headers=auth()
    )
    assert response.status_code == 422
    assert (await response.get_json())["error"]["details"][0]["rule"] == rule


async def test_batch_that_does_not_fit_is_refused_whole(smtp_server: SMTPTestServer) -> None:
    """With room for 2 more jobs, a batch of 3 gets 503 queue_full and queues nothing."""
    smtp_server.hold()
    app = create_app(settings_for(smtp_server, workers=1, queue_size=4), setup_logging=False)
    async with app.test_app():
        client = app.test_client()
        assert (await client.post("/email/send", json=MAIL)).status_code == 202
        await wait_until(lambda: smtp_server.holding)
        assert (await client.post("/email/send", json=MAIL)).status_code == 202
        response = await client.post("/email/batch", json=[MAIL] * 3)
        assert response.status_code == 503
        assert (await response.get_json())["error"]["code"] == "queue_full"
        assert open_jobs(app) == 2
        assert (await client.post("/email/batch", json=[MAIL] * 2)).status_code == 202
        smtp_server.release()


async def test_readyz_follows_queue_and_shutdown(smtp_server: SMTPTestServer) -> None:
    """readyz is 200 while accepting, 503 queue_full when full, 503 shutting_down when stopping."""
    smtp_server.hold()
    app = create_app(settings_for(smtp_server, workers=1, queue_size=1), setup_logging=False)
    async with app.test_app():
        client = app.test_client()
        assert (await client.get("/readyz")).status_code == 200
        await client.post("/email/send", json=MAIL)
        await wait_until(lambda: smtp_server.holding)
        full = await client.get("/readyz")
        assert (full.status_code, (await full.get_json())["error"]["code"]) == (503, "queue_full")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app.drain)
            await wait_until(lambda: not app.intake.accepting)
            closing = await client.get("/readyz")
            assert (await closing.get_json())["error"]["code"] == "shutting_down"
            smtp_server.release()


async def test_metrics_count_requests_attempts_and_outcomes(
    keyed_app: TrimailApp, smtp_server: SMTPTestServer
) -> None:
    """/metrics reports requests by route and status, attempts by class and final outcomes."""
    smtp_server.fail("DATA", "451 4.3.0 later")
    client = keyed_app.test_client()
    await client.post("/email/send", json=MAIL, headers=auth())
    await client.post("/email/send", json={}, headers=auth())
    await wait_until(lambda: retrying(keyed_app, 1))
    text = (await (await client.get("/metrics", headers=auth())).get_data()).decode()
    assert 'trimail_http_requests_total{route="/email/send",status="202"} 1.0' in text
    assert 'trimail_http_requests_total{route="/email/send",status="422"} 1.0' in text
    assert 'trimail_delivery_attempts_total{code_class="4xx",result="transient"} 1.0' in text
    assert "trimail_retries_scheduled_total 1.0" in text
    assert "trimail_queue_capacity 100.0" in text
    assert "trimail_jobs_retrying 1.0" in text
    assert "trimail_delivery_attempt_duration_seconds_count 1.0" in text
    assert "@" not in text  # no addresses, whatever happens


async def test_idempotent_retry_returns_the_same_job(
    keyed_app: TrimailApp, smtp_server: SMTPTestServer
) -> None:
    """The same key and body twice: one job, the same answer, marked as replayed."""
    client = keyed_app.test_client()
    headers = auth(**{"Idempotency-Key": "order-42"})
    first = await client.post("/email/send", json=MAIL, headers=headers)
    again = await client.post("/email/send", json=MAIL, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert await first.get_json() == await again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    await wait_until(lambda: open_jobs(keyed_app) == 0)
    assert len(smtp_server.received) == 1
    other = await client.post("/email/send", json={**MAIL, "subject": "x"}, headers=headers)
    assert (other.status_code, (await other.get_json())["error"]["code"]) == (
        409,
        "invalid_idempotent_request",
    )


async def test_a_refused_request_leaves_its_key_free(keyed_app: TrimailApp) -> None:
    """After a 422, the same key can carry the corrected request."""
    client = keyed_app.test_client()
    headers = auth(**{"Idempotency-Key": "fix-me"})
    bad = await client.post("/email/send", json={**MAIL, "to": "nope"}, headers=headers)
    assert bad.status_code == 422
    good = await client.post("/email/send", json=MAIL, headers=headers)
    assert good.status_code == 202


async def test_invalid_idempotency_key_is_400(keyed_app: TrimailApp) -> None:
    """A key over 256 characters is refused with invalid_idempotency_key."""
    headers = auth(**{"Idempotency-Key": "k" * 257})
    response = await keyed_app.test_client().post("/email/send", json=MAIL, headers=headers)
    assert response.status_code == 400
    assert (await response.get_json())["error"]["code"] == "invalid_idempotency_key"


async def test_a_replay_is_answered_during_the_drain(smtp_server: SMTPTestServer) -> None:
    """While draining, a known Idempotency-Key is answered again; a new request gets 503, close."""
    smtp_server.hold()
    app = create_app(settings_for(smtp_server, workers=1), setup_logging=False)
    async with app.test_app():
        client = app.test_client()
        headers = {"Idempotency-Key": "order-7"}
        first = await client.post("/email/send", json=MAIL, headers=headers)
        await wait_until(lambda: smtp_server.holding)  # the drain cannot end yet
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app.drain)
            await wait_until(lambda: not app.intake.accepting)
            again = await client.post("/email/send", json=MAIL, headers=headers)
            assert again.status_code == 202
            assert again.headers["Idempotent-Replayed"] == "true"
            assert await again.get_json() == await first.get_json()
            new = await client.post("/email/send", json=MAIL, headers={"Idempotency-Key": "new"})
            assert new.status_code == 503
            assert (await new.get_json())["error"]["code"] == "shutting_down"
            assert new.headers["Connection"] == "close"  # so the client reconnects elsewhere
            smtp_server.release()
    assert len(smtp_server.received) == 1
