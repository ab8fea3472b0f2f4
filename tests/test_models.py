"""Validation rules of the request schema (pure functions, no I/O)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from pydantic import ValidationError

from trimail.models import SendRequest, parse_mailbox


def valid(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": "Sender <sender@example.com>",
        "to": "rcpt@example.com",
        "subject": "Hello",
        "text": "Body",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def errors_of(body: Any, **context: Any) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        SendRequest.model_validate(body, context=context)
    return [(e["loc"], e["type"]) for e in info.value.errors()]


def test_minimal_request_is_accepted() -> None:
    """A from, a to, a subject and a text body make a valid request."""
    request = SendRequest.model_validate(valid())
    assert request.sender.address == "sender@example.com"
    assert request.sender.name == "Sender"
    assert [m.address for m in request.to] == ["rcpt@example.com"]


def test_to_accepts_string_or_list() -> None:
    """``to`` (and cc, bcc, reply_to) take one address or a list of them."""
    request = SendRequest.model_validate(valid(to=["a@example.com", "B <b@example.com>"]))
    assert [str(m) for m in request.to] == ["a@example.com", "B <b@example.com>"]


@pytest.mark.parametrize(
    ("raw", "name", "address"),
    [
        ("a@example.com", "", "a@example.com"),
        ("Ann Lee <ann@example.com>", "Ann Lee", "ann@example.com"),
        ('"Lee, Ann" <ann@example.com>', "Lee, Ann", "ann@example.com"),
        ("Zoë <zoe@exämple.de>", "Zoë", "zoe@exämple.de"),
    ],
)
def test_mailbox_forms(raw: str, name: str, address: str) -> None:
    """Both "addr" and "Name <addr>" parse, quoted names included."""
    mailbox = parse_mailbox(raw)
    assert (mailbox.name, mailbox.address) == (name, address)


def test_idn_domain_is_idna_encoded_for_the_wire() -> None:
    """An internationalized domain keeps its Unicode form and gains an ASCII one."""
    mailbox = parse_mailbox("user@bücher.de")
    assert mailbox.smtp_address == "user@xn--bcher-kva.de"
    assert not mailbox.needs_smtputf8


def test_non_ascii_local_part_needs_smtputf8() -> None:
    """A non-ASCII local part is valid but can only travel with SMTPUTF8."""
    mailbox = parse_mailbox("jürgen@example.de")
    assert mailbox.needs_smtputf8
    assert mailbox.smtp_address == "jürgen@example.de"


@pytest.mark.parametrize("raw", ["not-an-address", "a@b", "Name <>", "a@@b.com", "<a@b.com"])
def test_bad_addresses_are_refused(raw: str) -> None:
    """Anything that is not an address is an invalid_address error on its field."""
    assert errors_of(valid(to=raw)) == [(("to", 0), "invalid_address")]


def test_missing_fields_are_named() -> None:
    """Without from (and no default), to and subject, each is reported missing."""
    found = errors_of({"text": "x"})
    assert (("from_",), "missing") in found
    assert (("to",), "missing") in found
    assert (("subject",), "missing") in found


def test_default_from_fills_in_the_sender() -> None:
    """A configured default sender is used when the request has none."""
    request = SendRequest.model_validate(
        valid(**{"from": None}), context={"default_from": "Ops <ops@example.com>"}
    )
    assert str(request.sender) == "Ops <ops@example.com>"


def test_unknown_fields_are_refused() -> None:
    """An agent that writes ``body`` instead of ``text`` is told so."""
    assert (("body",), "extra_forbidden") in errors_of(valid(text=None, body="hi"))


def test_a_body_is_required() -> None:
    """Neither text nor html is an error."""
    assert errors_of(valid(text=None)) == [((), "body_required")]


def test_every_problem_comes_in_one_round() -> None:
    """A bad address and a missing body are reported together, not one after the other."""
    assert errors_of(valid(to="bob", text=None)) == [
        (("to", 0), "invalid_address"),
        (("text",), "body_required"),
    ]
    assert errors_of(valid(to=None, subject=None, text=None)) == [
        (("to",), "missing"),
        (("subject",), "missing"),
        (("text",), "body_required"),
    ]


@pytest.mark.parametrize("field", ["to", "cc", "bcc", "reply_to"])
@pytest.mark.parametrize("value", [5, {"address": "a@example.com"}, True])
def test_a_recipient_field_is_an_address_or_a_list(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        SendRequest.model_validate(valid(**{field: value}))
    (error,) = info.value.errors()
    assert (error["loc"], error["type"]) == ((field,), "string_or_list_type")
    assert error["msg"] == "Input should be an address or a list of addresses"


def test_one_label_domains_only_in_dev_mode() -> None:
    """``me@localhost`` is accepted with ``local_domains`` (dev mode), refused otherwise."""
    assert errors_of(valid(to="me@localhost")) == [(("to", 0), "invalid_address")]
    request = SendRequest.model_validate(
        valid(to="Me <me@localhost>", **{"from": None}),
        context={"local_domains": True, "default_from": "trimail (dev) <trimail@localhost>"},
    )
    assert [str(m) for m in request.to] == ["Me <me@localhost>"]
    assert request.sender.address == "trimail@localhost"
    assert errors_of(valid(to="me@local_host"), local_domains=True) == [
        (("to", 0), "invalid_address")
    ]


def test_html_alone_is_enough() -> None:
    """html without text is a valid request."""
    assert SendRequest.model_validate(valid(text=None, html="<p>hi</p>")).html == "<p>hi</p>"


@pytest.mark.parametrize("subject", ["", "   "])
def test_blank_subject_is_refused(subject: str) -> None:
    """The subject must have some non-blank text."""
    assert errors_of(valid(subject=subject)) == [(("subject",), "empty")]


def test_subject_length_limit() -> None:
    """998 characters of subject pass, 999 do not."""
    SendRequest.model_validate(valid(subject="s" * 998))
    assert errors_of(valid(subject="s" * 999)) == [(("subject",), "string_too_long")]


@pytest.mark.parametrize("bad", ["\r", "\n", "\t", "\x00", "\x7f", "\x85", "\u2028", "\u2029"])
@pytest.mark.parametrize("where", ["subject", "to", "from", "header", "filename", "name"])
def test_control_and_line_break_characters_never_reach_a_header(bad: str, where: str) -> None:
    """C0, DEL, C1 and U+2028/U+2029 are refused in everything a header is built from."""
    body = valid()
    if where == "subject":
        body["subject"] = f"Hi{bad}Bcc: victim@example.com"
    elif where == "to":
        body["to"] = f"rcpt@example.com{bad}"
    elif where == "from":
        body["from"] = f"Sender{bad} <sender@example.com>"
    elif where == "header":
        body["headers"] = {"X-Tag": f"a{bad}b"}
    elif where == "filename":
        body["attachments"] = [{"filename": f"a{bad}.txt", "content": "aGk="}]
    else:
        body["to"] = f"Name{bad}X <rcpt@example.com>"
    found = errors_of(body)
    assert len(found) == 1
    assert found[0][1] == "control_character"


@pytest.mark.parametrize(
    "word", ["=?utf-8?q?a=0D=0ABcc:_x@example.com?=", "=?utf-8?b?YQ0KYg==?=", "=?x-bogus?q?a?="]
)
def test_encoded_words_that_decode_to_line_breaks_are_refused(word: str) -> None:
    """RFC 2047 encoded-words that decode to CR/LF (or cannot be decoded) are refused."""
    assert errors_of(valid(subject=f"Hi {word}")) == [(("subject",), "encoded_control_character")]


def test_harmless_encoded_word_is_kept() -> None:
    """An encoded-word of ordinary text is allowed through."""
    SendRequest.model_validate(valid(subject="=?utf-8?q?caf=C3=A9?="))


@pytest.mark.parametrize(
    "name",
    [
        "From",
        "to",
        "BCC",
        "Reply-To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "content-transfer-encoding",
    ],
)
def test_structural_headers_are_refused(name: str) -> None:
    """Headers trimail writes itself cannot be set through ``headers``."""
    found = errors_of(valid(headers={name: "x"}))
    assert found == [(("headers",), "forbidden_header")]


@pytest.mark.parametrize("name", ["X Bad", "X:Bad", "", "Ünï", "x" * 77])
def test_header_names_must_be_field_names(name: str) -> None:
    """Header names are printable ASCII without colon or space, at most 76 characters."""
    assert errors_of(valid(headers={name: "x"})) == [(("headers",), "invalid_header_name")]


def test_custom_headers_pass() -> None:
    """Ordinary extra headers are accepted."""
    request = SendRequest.model_validate(
        valid(headers={"X-Campaign": "spring", "List-Id": "<a.b>"})
    )
    assert request.headers == {"X-Campaign": "spring", "List-Id": "<a.b>"}


def test_attachment_is_decoded_and_typed() -> None:
    """Attachment content is strict base64, and the type is guessed from the name."""
    content = base64.b64encode(b"%PDF-1.4 data").decode()
    request = SendRequest.model_validate(
        valid(attachments=[{"filename": "r.pdf", "content": content}])
    )
    assert request.attachments[0].content == b"%PDF-1.4 data"
    assert request.attachments[0].mime_type == "application/pdf"


@pytest.mark.parametrize("content", ["not base64!", "aGk", "aG\nk=", 12])
def test_attachment_content_must_be_strict_base64(content: Any) -> None:
    """Whitespace, bad padding, foreign characters and non-strings are refused."""
    found = errors_of(valid(attachments=[{"filename": "a.txt", "content": content}]))
    assert found[0][0] == ("attachments", 0, "content")


def test_attachment_content_type_is_checked() -> None:
    """An explicit content type must look like type/subtype."""
    found = errors_of(
        valid(attachments=[{"filename": "a", "content": "aGk=", "content_type": "pdf"}])
    )
    assert found == [(("attachments", 0, "content_type"), "invalid_content_type")]


def test_recipient_limit_counts_to_cc_bcc_and_reply_to() -> None:
    """to + cc + bcc + reply_to together may not exceed the configured maximum."""
    body = valid(
        to=["a@example.com", "b@example.com"],
        cc="c@example.com",
        bcc="d@example.com",
        reply_to="e@example.com",
    )
    SendRequest.model_validate(body, context={"max_recipients": 5})
    assert errors_of(body, max_recipients=4) == [(("to",), "too_many_recipients")]


def test_header_and_attachment_counts_are_bounded() -> None:
    """At most 100 extra headers and 100 attachments; both breaches reported at once."""
    attachment = {"filename": "a.txt", "content": "aGk="}
    SendRequest.model_validate(
        valid(headers={f"X-{n}": "v" for n in range(100)}, attachments=[attachment] * 100)
    )
    over = valid(headers={f"X-{n}": "v" for n in range(101)}, attachments=[attachment] * 101)
    assert errors_of(over) == [
        (("headers",), "too_many_headers"),
        (("attachments",), "too_many_attachments"),
    ]


def test_envelope_recipients_are_unique_and_include_bcc() -> None:
    """The envelope gets to, cc and bcc, each address once."""
    request = SendRequest.model_validate(
        valid(to=["a@example.com", "B@example.com"], cc="a@example.com", bcc="c@example.com")
    )
    assert [m.address for m in request.envelope_recipients] == [
        "a@example.com",
        "B@example.com",
        "c@example.com",
    ]


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_body_must_be_an_object(body: Any) -> None:
    """A JSON value that is not an object is refused as a whole."""
    assert errors_of(body)[0][1] == "model_type"


def test_a_recurring_mailbox_is_checked_once_and_a_bad_one_every_time() -> None:
    """The same address text is parsed once; an invalid one is refused on every request."""
    from pydantic_core import PydanticCustomError

    from trimail.mailbox import parse_mailbox, parse_text

    text = "Ada Lovelace <ada.cache-test@example.com>"
    first = parse_mailbox(text)
    hits = parse_text.cache_info().hits
    assert parse_mailbox(text) is first
    assert parse_text.cache_info().hits == hits + 1
    for _ in range(2):
        with pytest.raises(PydanticCustomError):
            parse_mailbox("not an address")
