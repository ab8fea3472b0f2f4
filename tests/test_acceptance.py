"""The two acceptance scenarios of the product requirements, through the real app.

Scenario 2 asserts an order of events, not a duration: the 202 arrives while
the SMTP server is still holding the message it was given.
"""

from __future__ import annotations

from typing import Any

from trimail.http.app import TrimailApp

from .conftest import final_lines, wait_until
from .smtpserver import SMTPTestServer

MAIL = {"from": "svc@example.com", "to": "user@example.com", "subject": "Hi", "text": "Hello"}


async def test_scenario_1_api_responds_asynchronously(
    running_app: TrimailApp, smtp_server: SMTPTestServer, caplog: Any
) -> None:
    """A valid request gets 202 before its mail is delivered, and is delivered after."""
    smtp_server.hold()
    response = await running_app.test_client().post("/email/send", json=MAIL)
    assert response.status_code == 202
    job_id = (await response.get_json())["id"]
    assert smtp_server.received == []  # answered before the send finished
    smtp_server.release()
    await wait_until(lambda: final_lines(caplog) == {job_id: ["sent"]})
    assert len(smtp_server.received) == 1


async def test_scenario_2_slow_provider_does_not_slow_the_api(
    running_app: TrimailApp, smtp_server: SMTPTestServer, caplog: Any
) -> None:
    """While the provider holds a message, further requests are still answered 202."""
    smtp_server.hold()
    client = running_app.test_client()
    first = await client.post("/email/send", json=MAIL)
    await wait_until(lambda: smtp_server.holding)  # the provider now has the message
    answers = [await client.post("/email/send", json=MAIL) for _ in range(5)]
    assert smtp_server.holding  # ... and still has it
    assert smtp_server.received == []
    assert [a.status_code for a in (first, *answers)] == [202] * 6
    smtp_server.release()
    await wait_until(lambda: len(final_lines(caplog)) == 6)
    assert set(map(tuple, final_lines(caplog).values())) == {("sent",)}
    assert len(smtp_server.received) == 6
