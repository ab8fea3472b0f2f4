"""The endpoint under hostile input, through the real app with a MemoryTransport (no network).

Whatever the body (arbitrary bytes, invalid UTF-8, deep nesting, huge numbers,
wrong types in every field, generated JSON), ``POST /email/send`` answers 2xx or
a 4xx in the ``{"error": {"code", "message", "details"?}}`` shape, never a 5xx,
and in bounded time. A 4xx queues nothing and sends nothing; a 202 is delivered.
Big attachments and non-ASCII everywhere arrive intact; what cannot be sent is a 422.

Each request is bounded with ``trio.fail_after`` on the real clock (pytest-trio's
default); as that cannot interrupt work that never yields to trio, the time taken is
also measured and checked after the fact.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, cast

import pytest
import trio
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from trimail.delivery.message import Envelope
from trimail.http.app import TrimailApp, create_app
from trimail.testing import MemoryTransport

from .conftest import open_jobs, settings_for, wait_until

#: Real seconds any one request may take, generously.
REQUEST_BOUND = 10.0
JSON_TYPE = "application/json"
VALID: dict[str, Any] = {
    "from": "Agent <agent@example.com>",
    "to": "rcpt@example.com",
    "subject": "Hi",
    "text": "x",
}
FIELDS = [
    "from",
    "to",
    "cc",
    "bcc",
    "reply_to",
    "subject",
    "text",
    "html",
    "headers",
    "attachments",
]
HYPOTHESIS = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)


@dataclass
class Harness:
    """The running app, what its transport recorded, and the answers given so far."""

    app: TrimailApp
    sent: list[Envelope]
    accepted: list[str] = field(default_factory=list)

    async def post(
        self,
        data: bytes,
        content_type: str = JSON_TYPE,
        path: str = "/email/send",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """POST ``data``; check the answer's shape and that a refusal queued nothing.

        Earlier jobs are let finish first, so that the count of outstanding jobs moves
        only with this request (:meth:`delivered` counts what was sent as well).
        """
        await wait_until(lambda: open_jobs(self.app) == 0)
        started = time.monotonic()
        with trio.fail_after(REQUEST_BOUND):
            response = await self.app.test_client().post(
                path, data=data, headers={"Content-Type": content_type, **(headers or {})}
            )
            raw = await response.get_data()
        elapsed = time.monotonic() - started
        assert elapsed < REQUEST_BOUND, f"the request took {elapsed:.1f} s"
        status = response.status_code
        assert status in (202, 400, 409, 413, 415, 422), f"{status}: {raw[:300]!r}"
        answer = json.loads(raw)
        if status == 202:
            jobs = answer["data"] if path == "/email/batch" else [answer]
            assert all(job == {"id": job["id"], "status": "queued"} for job in jobs)
            if response.headers.get("Idempotent-Replayed") != "true":
                self.accepted.extend(job["id"] for job in jobs)
        else:
            error = answer["error"]
            assert set(answer) == {"error"}
            assert set(error) <= {"code", "message", "details"}
            assert isinstance(error["code"], str)
            assert isinstance(error["message"], str)
            assert error["code"]
            assert error["message"]
            for detail in error.get("details", []):
                assert set(detail) == {"field", "rule", "message"}
            assert open_jobs(self.app) == 0, "a refused request queued a job"
        return status, answer

    async def post_json(self, body: Any) -> tuple[int, Any]:
        """POST ``body`` as UTF-8 JSON (lone surrogates as ``\\uD800`` escapes, as JSON allows)."""
        try:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            data = json.dumps(body).encode("ascii")
        return await self.post(data)

    async def delivered(self) -> dict[str, EmailMessage]:
        """Wait for every accepted job; each one was sent once, nothing else was."""
        await wait_until(lambda: open_jobs(self.app) == 0)
        assert len(self.sent) == len(self.accepted), "a refused request was sent, or a job lost"
        by_id = {}
        for envelope in self.sent:
            msg = parse(envelope.data)
            by_id[msg["Message-ID"].strip("<>").partition("@")[0]] = msg
        assert sorted(by_id) == sorted(self.accepted)
        return by_id


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[Harness]:
    sent: list[Envelope] = []
    app = create_app(
        settings_for(**overrides),
        transport_factory=MemoryTransport.factory(sent),
        setup_logging=False,
    )
    async with app.test_app():
        yield Harness(app, sent)


def parse(data: bytes) -> EmailMessage:
    """Parse a sent message (UTF-8 headers, under SMTPUTF8, are decoded first)."""
    if data.isascii():
        return cast(EmailMessage, email.message_from_bytes(data, policy=email.policy.default))
    text = data.decode("utf-8")
    return cast(EmailMessage, email.message_from_string(text, policy=email.policy.default))


# -- bodies that are not what the API expects ------------------------------------------------


def nested(depth: int, opener: str = "[", closer: str = "]") -> bytes:
    return (opener * depth + closer * depth).encode()


MALFORMED = [
    b"",
    b"null",
    b"{",
    b'{"to": ',
    b"\xff\xfe{}",
    b'{"subject": "\xc3\x28"}',  # invalid UTF-8 inside a string
    b'{"subject": "\xed\xa0\x80"}',  # a UTF-8-encoded surrogate
    b'\xef\xbb\xbf{"to": "a@example.com"}',  # a byte order mark
    b'{"to": NaN}',
    b'{"to": -Infinity}',
    b'{"to": 1e400}',  # a float that overflows to infinity
    b'{"to": 1e-400}',
    b'{"to": ' + b"9" * 5000 + b"}",  # more digits than Python converts
    b'{"to": ' + b"9" * 4000 + b"}",
    b'{"subject": "\\ud800"}',
    b"[" * 100_000,
    nested(100_000),
    nested(900),
    b'{"to": ' + nested(5_000) + b"}",
    b'{"headers": ' + b'{"a":' * 5_000 + b"1" + b"}" * 5_001,
    b'{"to": "a@example.com", "to": 5}',  # a repeated key: the last one wins
    b'{"' + b"x" * 100_000 + b'": 1}',
    json.dumps({**VALID, "to": ["a@example.com"] * 10_000}).encode(),
]


async def test_malformed_bodies_get_a_4xx_json_error() -> None:
    """Broken JSON, invalid UTF-8, deep nesting and huge numbers are a 4xx, never a 5xx."""
    async with running() as harness:
        for body in MALFORMED:
            status, _ = await harness.post(body)
            assert 400 <= status < 500, body[:60]
        await harness.delivered()


WRONG_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**70,
    1.5,
    1e308,
    "",
    " ",
    "x" * 20_000,
    [],
    [None],
    [[]],
    {},
    {"a": 1},
    {"filename": 1},
]


async def test_wrong_types_in_every_field() -> None:
    """Every field given a value of every wrong type is a 4xx (or a 202 if it happens to fit)."""
    async with running() as harness:
        for name in FIELDS:
            for value in WRONG_VALUES:
                await harness.post_json({**VALID, name: value})
                await harness.post_json({**VALID, "headers": {"X-A": value}})
                attachment = {"filename": "a.txt", "content": "aGk=", name: value}
                await harness.post_json({**VALID, "attachments": [attachment]})
        for value in WRONG_VALUES:
            for key in ("filename", "content", "content_type"):
                attachment = {"filename": "a.txt", "content": "aGk=", key: value}
                await harness.post_json({**VALID, "attachments": [attachment]})
        await harness.delivered()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.sampled_from(["a@example.com", "Name <n@example.com>", "aGk=", "text/plain"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), children, max_size=4
        )
    ),
    max_leaves=12,
)
json_bodies = st.one_of(
    json_values,
    st.builds(lambda name, value: {**VALID, name: value}, st.sampled_from(FIELDS), json_values),
    st.builds(
        lambda value: {**VALID, "attachments": [value]},
        st.fixed_dictionaries({}, optional={"filename": json_values, "content": json_values}),
    ),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
)


@HYPOTHESIS
@given(bodies=st.lists(json_bodies, min_size=10, max_size=10))
async def test_generated_json_gets_202_or_a_4xx(bodies: list[Any]) -> None:
    """Generated JSON of any shape, alone or in any field, is 202 or a 4xx; every 202 is sent."""
    async with running() as harness:
        for body in bodies:
            await harness.post(json.dumps(body).encode("utf-8", "surrogatepass"))
        await harness.delivered()


@HYPOTHESIS
@given(
    bodies=st.lists(
        st.one_of(json_values, st.lists(json_bodies, max_size=3)), min_size=5, max_size=5
    )
)
async def test_generated_batches_get_202_or_a_4xx(bodies: list[Any]) -> None:
    """``POST /email/batch`` with generated JSON is 202 or a 4xx; every accepted message is sent."""
    async with running() as harness:
        for body in bodies:
            await harness.post(json.dumps(body).encode(), path="/email/batch")
        await harness.delivered()


async def test_hostile_idempotency_keys() -> None:
    """Odd Idempotency-Keys are a 4xx or work as keys; a replay sends nothing twice."""
    body = json.dumps(VALID).encode()
    async with running() as harness:
        for key in ["", " ", "a b", "clé", "\x7f", "k" * 300, "k" * 100_000, "=?utf-8?q?=0A?="]:
            await harness.post(body, headers={"Idempotency-Key": key})
            await harness.post(body, headers={"Idempotency-Key": key})
            status, _ = await harness.post(b"{}", headers={"Idempotency-Key": key})
            assert 400 <= status < 500
        await harness.delivered()


@HYPOTHESIS
@given(bodies=st.lists(st.binary(max_size=300), min_size=10, max_size=10))
async def test_arbitrary_bytes_get_a_4xx(bodies: list[bytes]) -> None:
    """Arbitrary bytes as the body are a 4xx JSON error."""
    async with running() as harness:
        for body in bodies:
            status, _ = await harness.post(body)
            assert 400 <= status < 500
        await harness.delivered()


@HYPOTHESIS
@given(
    position=st.floats(0, 1),
    garbage=st.binary(min_size=1, max_size=4).filter(lambda b: not b.isascii()),
)
async def test_invalid_utf8_anywhere_is_400(position: float, garbage: bytes) -> None:
    """Bytes that are not UTF-8, put anywhere in a valid body, are 400 invalid_json."""
    valid = json.dumps({**VALID, "subject": "Grüße 🎉"}, ensure_ascii=False).encode()
    at = int(position * len(valid))
    body = valid[:at] + garbage + valid[at:]
    assume(not is_utf8(body))
    async with running() as harness:
        status, answer = await harness.post(body)
        assert (status, answer["error"]["code"]) == (400, "invalid_json")
        await harness.delivered()


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(json.dumps({**VALID, "text": "x"}).encode("utf-16"), id="utf-16"),
        pytest.param(json.dumps({**VALID, "text": "x"}).encode("utf-32"), id="utf-32"),
        pytest.param(
            json.dumps(VALID).encode().replace(b'"x"', b'"\xed\xa0\x80"'),
            id="utf-8-encoded-surrogate",
        ),
    ],
)
async def test_bodies_that_are_not_utf8_are_400(body: bytes) -> None:
    """The body must be UTF-8: other encodings and encoded surrogates are 400 invalid_json."""
    assert not is_utf8(body)
    async with running() as harness:
        status, answer = await harness.post(body)
        assert (status, answer["error"]["code"]) == (400, "invalid_json")
        await harness.delivered()


async def test_other_media_types_and_oversized_bodies() -> None:
    """A non-JSON media type is 415 and a body over the limit 413, both in the JSON shape."""
    async with running(max_request_bytes=4096) as harness:
        good = json.dumps(VALID).encode()
        for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
            assert (await harness.post(good, content_type))[0] == 415
        assert (await harness.post(b"{" + b" " * 5000 + b"}"))[0] == 413
        await harness.delivered()


# -- what must arrive intact ---------------------------------------------------------------


async def test_a_6_mib_attachment_arrives_byte_identical() -> None:
    """A 6 MiB attachment of random bytes is accepted and sent unchanged."""
    payload = random.Random(6).randbytes(6 * 2**20)
    attachment = {"filename": "big.bin", "content": base64.b64encode(payload).decode()}
    async with running() as harness:
        status, _ = await harness.post_json({**VALID, "attachments": [attachment]})
        assert status == 202
        (msg,) = (await harness.delivered()).values()
    (part,) = msg.iter_attachments()
    assert part.get_filename() == "big.bin"
    assert part.get_payload(decode=True) == payload


@dataclass(frozen=True)
class Script:
    subject: str
    name: str
    domain: str
    text: str


SCRIPTS = [
    Script("Grüße aus München", "Jürgen Müller", "bücher.de", "Schöne Grüße, Zoë"),
    Script("Привет, мир", "Иван Петров", "пример.рф", "Съешь же ещё этих булок"),
    Script("こんにちは世界", "山田太郎", "例え.jp", "いろはにほへと"),
    Script("مرحبا بالعالم", "محمد علي", "مثال.com", "نص عربي"),
    Script("שלום עולם", "דוד כהן", "example.co.il", "טקסט בעברית"),
    Script("नमस्ते दुनिया", "राज कुमार", "उदाहरण.भारत", "हिन्दी पाठ"),
    Script("你好世界", "王伟", "例子.中国", "中文文本"),
    Script("안녕하세요", "김민수", "한국.kr", "한국어 텍스트"),
    Script("สวัสดีชาวโลก", "สมชาย ใจดี", "ตัวอย่าง.ไทย", "ข้อความภาษาไทย"),
    Script("Ελληνικά νέα", "Γιώργος", "δοκιμή.gr", "Καλημέρα"),
    Script("Launch 🚀🎉 party", "Zoë 👩🏽‍💻", "example.com", "Emoji 👍🏾 and flags 🇩🇪🇯🇵"),
]


async def test_non_ascii_everywhere_is_delivered_unmangled() -> None:
    """Names, subjects, bodies, filenames in many scripts and emoji, IDN domains arrive as sent."""
    async with running() as harness:
        requests = {}
        for script in SCRIPTS:
            body = {
                "from": f"{script.name} <sender@{script.domain}>",
                "to": [f"{script.name} <to@{script.domain}>", "plain@example.com"],
                "cc": f'"{script.name}, Jr." <cc@{script.domain}>',
                "subject": script.subject,
                "text": script.text,
                "html": f"<p>{script.text}</p>",
                "headers": {"X-Label": script.subject},
                "attachments": [{"filename": f"{script.subject}.txt", "content": "aGk="}],
            }
            status, answer = await harness.post_json(body)
            assert status == 202, answer
            requests[answer["id"]] = script
        utf8_body = {**VALID, "to": "Jürgen <jürgen@bücher.de>", "subject": "SMTPUTF8 ✓"}
        status, answer = await harness.post_json(utf8_body)
        assert status == 202
        messages = await harness.delivered()
    for job_id, script in requests.items():
        msg = messages[job_id]
        assert msg["Subject"] == script.subject
        assert msg["X-Label"] == script.subject
        assert msg["From"].addresses[0].display_name == script.name
        assert [a.display_name for a in msg["To"].addresses] == [script.name, ""]
        assert msg["Cc"].addresses[0].display_name == f"{script.name}, Jr."
        plain, html = (
            p.get_content()
            for p in msg.walk()
            if p.get_content_maintype() == "text" and not p.is_attachment()
        )
        assert (plain, html) == (f"{script.text}\r\n", f"<p>{script.text}</p>\r\n")
        (attachment,) = msg.iter_attachments()
        assert attachment.get_filename() == f"{script.subject}.txt"
    utf8 = next(e for e in harness.sent if e.smtputf8)
    assert utf8.recipients == ("jürgen@bücher.de",)
    assert parse(utf8.data)["Subject"] == "SMTPUTF8 ✓"


# -- what cannot be sent is refused up front ---------------------------------------------------

UNSENDABLE = [
    pytest.param({"subject": "Hi\r\nBcc: victim@example.com"}, "subject", id="crlf-in-subject"),
    pytest.param({"to": "victim@example.com\n"}, "to[0]", id="lf-after-address"),
    pytest.param({"subject": "=?utf-8?q?=0D=0ABcc:_v@example.com?="}, "subject", id="encoded-crlf"),
    pytest.param({"to": "not-an-address"}, "to[0]", id="bad-address"),
    pytest.param({"to": "a@exa mple.com"}, "to[0]", id="blank-in-domain"),
    pytest.param({"headers": {"Bcc": "victim@example.com"}}, "headers.Bcc", id="bcc-header"),
    pytest.param({"headers": {"X-A": "a\u2028b"}}, "headers.X-A", id="line-separator"),
    pytest.param({"subject": "\ud800"}, "subject", id="surrogate-in-subject"),
    pytest.param(
        {"attachments": [{"filename": "a\x00.txt", "content": "aGk="}]},
        "attachments[0].filename",
        id="nul-in-filename",
    ),
    pytest.param(
        {"text": "\ud800"},
        "text",
        id="surrogate-in-text",
    ),
    pytest.param(
        {"headers": {"Sender": "a@example.com", "sender": "b@example.com"}},
        "headers.sender",
        id="sender-twice",
    ),
    pytest.param(
        {"to": "x" * 1000 + " <a@example.com>"},
        "to[0]",
        id="name-too-long-for-a-line",
    ),
    pytest.param(
        {"subject": "=??q?=0D=0AFrom:_CEO_<ceo@example.com>?="},
        "subject",
        id="loose-encoded-crlf",
    ),
    pytest.param(
        {"attachments": [{"filename": "a", "content": "aGk=", "content_type": "multipart/mixed"}]},
        "attachments[0].content_type",
        id="composite-content-type",
    ),
]


@pytest.mark.parametrize(("changes", "where"), UNSENDABLE)
async def test_what_cannot_be_sent_is_a_clear_422(changes: dict[str, Any], where: str) -> None:
    """A request that could not be sent as asked is refused with a 422 naming the field."""
    async with running() as harness:
        status, answer = await harness.post_json({**VALID, **changes})
        assert status == 422, answer
        assert answer["error"]["code"] == "validation_error"
        assert where in [d["field"] for d in answer["error"]["details"]]
        await harness.delivered()


# -- no request holds the event loop -------------------------------------------------------------


async def test_blanks_in_an_address_do_not_stall_the_server() -> None:
    """A long run of blanks in an address is refused by its length, before any parsing.

    (It once took minutes of backtracking in a regular expression; what is
    shorter than the limit is split in linear time, see _split_name_and_address.)
    """
    async with running() as harness:
        status, answer = await harness.post_json({**VALID, "to": "a" + " " * 32_000 + "b"})
        assert status == 422
        assert [(d["field"], d["rule"]) for d in answer["error"]["details"]] == [
            ("to[0]", "address_too_long")
        ]
        await harness.delivered()


async def test_too_many_recipients_are_refused_before_each_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over the recipient limit, the request is refused without validating every address."""
    import trimail.mailbox

    calls = 0
    original: Callable[..., Any] = trimail.mailbox.validate_email

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(trimail.mailbox, "validate_email", counting)
    async with running(max_recipients=50) as harness:
        addresses = [f"r{i}@example.com" for i in range(5_000)]
        status, answer = await harness.post_json({**VALID, "to": addresses})
        assert status == 422
        assert "to" in [d["field"] for d in answer["error"]["details"]]
        assert calls <= 51, f"{calls} addresses validated to refuse the request"
        await harness.delivered()
