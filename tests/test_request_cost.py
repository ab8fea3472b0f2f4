"""What one request may cost: every list is bounded, every check linear, every answer small.

Each request here is shaped to be as expensive as its size allows. The tests
pin what the service answers and how large the answer is; what it costs in
CPU is measured by ``benchmarks/request_cost.py`` (see the README).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from trimail.http.app import TrimailApp
from trimail.http.body import count_json_values
from trimail.models import MAX_ATTACHMENTS, MAX_HEADERS

from .serving import MAIL

#: An error answer may exceed the request that caused it by at most this much.
ANSWER_OVERHEAD = 4096


async def post(app: TrimailApp, body: bytes | Any, path: str = "/email/send") -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await app.test_client().post(
        path, data=data, headers={"Content-Type": "application/json"}
    )
    answer = await response.get_data()
    assert len(answer) <= len(data) + ANSWER_OVERHEAD
    return response.status_code, json.loads(answer)


def rules(answer: Any) -> list[tuple[str, str]]:
    return [(detail["field"], detail["rule"]) for detail in answer["error"]["details"]]


async def test_sixteen_thousand_headers_are_refused_by_count(running_app: TrimailApp) -> None:
    """Beyond 100 extra headers the request is refused before any header is checked."""
    headers = {f"X-H{n}": "v" for n in range(16_000)}
    status, answer = await post(running_app, {**MAIL, "headers": headers})
    assert status == 422
    assert rules(answer) == [("headers", "too_many_headers")]
    assert str(MAX_HEADERS) in answer["error"]["details"][0]["message"]


async def test_attachments_are_bounded_in_number(running_app: TrimailApp) -> None:
    """Beyond 100 attachments the request is refused before any is decoded."""
    attachment = {"filename": "a.txt", "content": "aGk="}
    status, answer = await post(running_app, {**MAIL, "attachments": [attachment] * 1000})
    assert status == 422
    assert rules(answer) == [("attachments", "too_many_attachments")]
    assert str(MAX_ATTACHMENTS) in answer["error"]["details"][0]["message"]


async def test_reply_to_counts_toward_the_recipient_limit(running_app: TrimailApp) -> None:
    """reply_to is counted with to, cc and bcc: 16,000 reply addresses are refused unread."""
    status, answer = await post(running_app, {**MAIL, "reply_to": ["r@example.com"] * 16_000})
    assert status == 422
    assert rules(answer) == [("to", "too_many_recipients")]
    assert "reply_to" in answer["error"]["details"][0]["message"]


async def test_unknown_fields_give_a_short_answer(running_app: TrimailApp) -> None:
    """Thousands of unknown fields: 50 are listed, the rest counted, the answer stays small."""
    unknown = {f"field_{n}_{'x' * 40}": 0 for n in range(20_000)}
    status, answer = await post(running_app, {**MAIL, **unknown})
    assert status == 422
    error = answer["error"]
    assert len(error["details"]) == 50
    assert error["omitted"] == 20_000 - 50
    assert "more problem(s) not listed" in error["message"]
    assert len(json.dumps(answer)) < 16_384


async def test_long_values_are_shortened_in_errors(running_app: TrimailApp) -> None:
    """A megabyte-long invalid address is refused by length, and not echoed back."""
    status, answer = await post(running_app, {**MAIL, "to": "x" * 1_000_000})
    assert status == 422
    assert rules(answer) == [("to[0]", "address_too_long")]
    assert len(json.dumps(answer)) < 1024


async def test_a_batch_of_bad_messages_gives_a_short_answer(running_app: TrimailApp) -> None:
    """100 messages with 50 bad addresses each: at most 50 details, each message shortened."""
    bad = {**MAIL, "to": ["not an address " + "y" * 500] * 50}
    status, answer = await post(running_app, [bad] * 100, path="/email/batch")
    assert status == 422
    assert len(answer["error"]["details"]) == 50
    assert answer["error"]["omitted"] == 100 * 50 - 50
    assert all(len(detail["message"]) <= 300 for detail in answer["error"]["details"])


async def test_a_body_of_many_tiny_values_is_refused_unparsed(running_app: TrimailApp) -> None:
    """Millions of empty objects (seconds of json.loads) are refused by their count: 413."""
    body = b'{"x": [' + b"{}," * 1_000_000 + b"{}]}"
    status, answer = await post(running_app, body)
    assert status == 413
    assert answer["error"]["code"] == "payload_too_large"
    assert "JSON values" in answer["error"]["message"]


async def test_a_large_valid_message_is_still_accepted(running_app: TrimailApp) -> None:
    """The limits leave room for the largest real mail: 100 headers, 100 attachments, big text."""
    attachment = {"filename": "data.bin", "content": base64.b64encode(b"\x00" * 50_000).decode()}
    message = {
        **MAIL,
        "to": [f"user{n}@example.com" for n in range(25)],
        "reply_to": [f"reply{n}@example.com" for n in range(25)],
        "headers": {f"X-Tag-{n}": "value" for n in range(MAX_HEADERS)},
        "attachments": [attachment] * MAX_ATTACHMENTS,
        "text": "line of text\n" * 50_000,
    }
    status, answer = await post(running_app, message)
    assert status == 202, answer


def test_json_values_are_counted_from_the_bytes() -> None:
    """Strings count once whatever they hold; structure outside strings counts per value."""
    plain = count_json_values(b'{"text": ""}', 100)
    assert count_json_values(b'{"text": "a, b: [c] {d}"}', 100) == plain
    assert count_json_values(b'{"text": "say \\"a, b\\" \\\\"}', 100) == plain
    assert count_json_values(b"[1, 2, 3, 4]", 100) >= 4
    assert count_json_values(b"[" + b"{}," * 999 + b"{}]", 100_000) >= 1000
