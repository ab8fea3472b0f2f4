"""Log output: JSON lines with the job fields, and no secrets or bodies."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest

from trimail.config import LogFormat
from trimail.http.access import owner_id
from trimail.http.app import create_app
from trimail.http.requestlog import JOBS, KEY_CHARS, request_line
from trimail.ledger import Closing, Ledger
from trimail.logs import configure_logging, flush_logging

from .conftest import settings_for
from .serving import MAIL
from .smtpserver import SMTPTestServer


def test_json_lines_carry_job_fields() -> None:
    """In JSON format every job line is one object with job_id, event and outcome."""
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, "INFO", stream=stream)
    ledger = Ledger()
    try:
        ledger.accepted("a" * 32, recipients=1)
        ledger.attempt("a" * 32, 1, "delivered", 250, 0.012)
        ledger.close("a" * 32, Closing.SENT, attempts=1, delivered=1)
    finally:
        flush_logging()
        logging.getLogger("trimail").handlers.clear()
        logging.getLogger("trimail").propagate = True
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["accepted", "attempt", "final"]
    assert all(r["job_id"] == "a" * 32 for r in records)
    assert records[1]["smtp_code"] == 250
    assert records[1]["duration_ms"] == 12.0
    assert records[2]["outcome"] == "sent"
    assert ledger.open == set()


def test_the_ledger_answers_for_open_jobs_only() -> None:
    """Accepted and claimed jobs are open here until closed, or forgotten when closed elsewhere."""
    ledger = Ledger()
    ledger.accepted("a", 1)
    ledger.claimed("b")
    ledger.claimed("c")
    assert ledger.open == {"a", "b", "c"}
    ledger.close("a", Closing.FAILED, attempts=1, reason="550 no")
    ledger.forget(["b"])
    assert ledger.open == {"c"}


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "trimail.access"]


async def test_every_request_has_one_line_with_its_status_and_jobs(
    smtp_server: SMTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Refusals decided before the body (401), bad input (422) and a 202 each leave a line;
    the key, the body and the password never appear in one."""
    settings = settings_for(smtp_server, api_keys="alpha-key", smtp_password="hunter2")
    app = create_app(settings, setup_logging=False)
    async with app.test_app():
        client = app.test_client()
        await client.post("/email/send", json=MAIL)
        await client.post(
            "/email/send", json={**MAIL, "to": "not an address", "text": "secret body"},
            headers={"Authorization": "Bearer alpha-key"},
        )  # fmt: skip
        accepted = await client.post(
            "/email/send", json=MAIL,
            headers={"Authorization": "Bearer alpha-key", "Idempotency-Key": "order-7"},
        )  # fmt: skip
        job_id = (await accepted.get_json())["id"]
        await client.get(f"/email/{job_id}", headers={"Authorization": "Bearer alpha-key"})
    lines = access_records(caplog)
    assert [(r.method, r.path, r.status) for r in lines] == [  # type: ignore[attr-defined]
        ("POST", "/email/send", 401),
        ("POST", "/email/send", 422),
        ("POST", "/email/send", 202),
        ("GET", f"/email/{job_id}", 200),
    ]
    assert lines[2].job_ids == [job_id]  # type: ignore[attr-defined]
    assert lines[2].idempotency_key == "order-7"  # type: ignore[attr-defined]
    assert lines[2].owner == owner_id(b"alpha-key")  # type: ignore[attr-defined]
    assert not hasattr(lines[0], "owner")
    assert all(r.duration_ms >= 0 for r in lines)  # type: ignore[attr-defined]
    text = "\n".join(r.getMessage() + repr(vars(r)) for r in lines)
    for secret in ("alpha-key", "secret body", "hunter2"):
        assert secret not in text


async def test_the_request_log_can_be_turned_off(
    smtp_server: SMTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings_for(smtp_server, access_log=False), setup_logging=False)
    async with app.test_app():
        assert (await app.test_client().post("/email/send", json=MAIL)).status_code == 202
        assert (await app.test_client().get("/healthz")).status_code == 200
    assert access_records(caplog) == []
    assert any(getattr(r, "event", None) == "accepted" for r in caplog.records)


def test_a_request_line_names_the_client_and_shortens_nothing_it_needs() -> None:
    scope = {"method": "POST", "path": "/email/batch", "client": ("10.0.0.5", 41000),
             "headers": [(b"idempotency-key", b"k" * 300)], JOBS: ["a" * 32, "b" * 32]}  # fmt: skip
    text, fields = request_line(scope, 202, 0.0034, "0123456789abcdef")
    assert text == (
        f'10.0.0.5:41000 "POST /email/batch" 202 3.4 ms job {"a" * 32},{"b" * 32} '
        f"owner 0123456789abcdef idempotency-key {'k' * KEY_CHARS!r}"
    )
    assert fields["job_ids"] == ["a" * 32, "b" * 32]
    assert len(fields["idempotency_key"]) == KEY_CHARS
    assert request_line({**scope, "client": None, "headers": []}, 401, 0, None)[0] == (
        'unix "POST /email/batch" 401 0.0 ms job ' + f"{'a' * 32},{'b' * 32}"
    )


def test_json_and_text_lines_carry_the_process_id() -> None:
    for log_format in LogFormat:
        stream = io.StringIO()
        configure_logging(log_format, "INFO", stream=stream)
        try:
            logging.getLogger("trimail.access").info("one")
        finally:
            flush_logging()
            logging.getLogger("trimail").handlers.clear()
            logging.getLogger("trimail").propagate = True
        line = stream.getvalue()
        if log_format is LogFormat.JSON:
            assert json.loads(line)["pid"] == os.getpid()
        else:
            assert f"[{os.getpid()}] trimail.access: one" in line
