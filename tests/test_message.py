"""Building the MIME message and envelope from a validated request."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from typing import Any, cast

import pytest

from trimail.delivery.message import _check_headers, build_envelope, check_line_endings
from trimail.errors import PermanentDeliveryError
from trimail.models import SendRequest


def request(**changes: Any) -> SendRequest:
    body: dict[str, Any] = {
        "from": "Sender <sender@example.com>",
        "to": ["rcpt@example.com"],
        "subject": "Hello",
        "text": "Body text",
    }
    body.update(changes)
    return SendRequest.model_validate(body)


def parse(data: bytes) -> EmailMessage:
    return cast(EmailMessage, email.message_from_bytes(data, policy=email.policy.default))


def test_headers_and_body_round_trip() -> None:
    """Subject, addresses and body parse back to what the request said."""
    envelope = build_envelope(
        request(cc="Cc Person <cc@example.com>", reply_to="replies@example.com"), "job1"
    )
    msg = parse(envelope.data)
    assert msg["Subject"] == "Hello"
    assert msg["From"] == "Sender <sender@example.com>"
    assert msg["To"] == "rcpt@example.com"
    assert msg["Cc"] == "Cc Person <cc@example.com>"
    assert msg["Reply-To"] == "replies@example.com"
    assert msg.get_content().strip() == "Body text"
    assert msg["Date"]


def test_message_id_carries_the_job_id() -> None:
    """The Message-ID is <job-id@sender-domain>."""
    msg = parse(build_envelope(request(), "abc123").data)
    assert msg["Message-ID"] == "<abc123@example.com>"


def test_bcc_is_in_the_envelope_only() -> None:
    """Bcc recipients receive the mail but appear in no header."""
    envelope = build_envelope(request(bcc=["Hidden <hidden@example.com>"]), "j")
    assert envelope.recipients == ("rcpt@example.com", "hidden@example.com")
    assert b"hidden" not in envelope.data.lower()


def test_lines_end_in_crlf_and_fit_998_octets() -> None:
    """Serialization uses CRLF throughout and folds long headers."""
    envelope = build_envelope(request(subject="word " * 190, text="a\nb\rc\r\nd"), "j")
    lines = envelope.data.split(b"\r\n")
    assert all(b"\n" not in line and b"\r" not in line for line in lines)
    assert max(len(line) for line in lines) <= 998


def test_text_and_html_make_multipart_alternative() -> None:
    """Both bodies go out as multipart/alternative, text first."""
    msg = parse(build_envelope(request(html="<p>Body</p>"), "j").data)
    assert msg.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in msg.iter_parts()]
    assert parts == ["text/plain", "text/html"]


def test_html_only() -> None:
    """html alone is a text/html message."""
    msg = parse(build_envelope(request(text=None, html="<p>x</p>"), "j").data)
    assert msg.get_content_type() == "text/html"


def test_attachments_make_multipart_mixed() -> None:
    """Attachments keep their bytes, name and type."""
    payload = bytes(range(256)) * 4
    import base64

    msg = parse(
        build_envelope(
            request(
                attachments=[
                    {"filename": "data.bin", "content": base64.b64encode(payload).decode()},
                    {"filename": "résumé.txt", "content": "aGk=", "content_type": "text/plain"},
                ]
            ),
            "j",
        ).data
    )
    assert msg.get_content_type() == "multipart/mixed"
    attachments = list(msg.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["data.bin", "résumé.txt"]
    assert attachments[0].get_content_type() == "application/octet-stream"
    assert attachments[0].get_content() == payload


def test_non_ascii_is_encoded_not_mangled() -> None:
    """Names, subjects and bodies in any script survive the trip (RFC 2047, 7-bit bodies)."""
    envelope = build_envelope(
        request(
            **{"from": "Zoë Ågren <zoe@bücher.de>"},
            to="Иван <ivan@example.com>",
            subject="Grüße 🎉 日本語",
            text="Café ☕ — naïve",
        ),
        "j",
    )
    assert not envelope.smtputf8
    assert envelope.data.isascii()
    msg = parse(envelope.data)
    assert msg["Subject"] == "Grüße 🎉 日本語"
    assert msg["From"].addresses[0].display_name == "Zoë Ågren"
    assert msg["From"].addresses[0].domain == "xn--bcher-kva.de"
    assert msg["To"].addresses[0].display_name == "Иван"
    assert msg.get_content().strip() == "Café ☕ — naïve"


def test_non_ascii_local_part_uses_smtputf8() -> None:
    """A non-ASCII local part switches the message to UTF-8 headers and SMTPUTF8."""
    envelope = build_envelope(request(to="jürgen@example.de"), "j")
    assert envelope.smtputf8
    assert envelope.recipients == ("jürgen@example.de",)
    assert "jürgen@example.de".encode() in envelope.data


def test_extra_headers_are_written() -> None:
    """Custom headers from the request appear in the message."""
    msg = parse(build_envelope(request(headers={"X-Campaign": "spring"}), "j").data)
    assert msg["X-Campaign"] == "spring"


def test_header_check_refuses_a_line_that_would_end_the_headers() -> None:
    """A header line without a colon, which would push later headers into the body, is refused."""
    data = b"From: a@example.com\r\nTo: b@example.com\r\nno colon here\r\nBcc: x@y.z\r\n\r\nbody"
    with pytest.raises(PermanentDeliveryError, match="header check"):
        _check_headers(data, request())


def test_header_check_refuses_an_injected_header() -> None:
    """Bytes carrying a header the request did not ask for are refused before sending."""
    data = b"From: a@example.com\r\nTo: b@example.com\r\nBcc: evil@example.com\r\n\r\nbody"
    with pytest.raises(PermanentDeliveryError, match="header check"):
        _check_headers(data, request())


#: The line-ending tricks published as SMTP smuggling (SEC Consult, 2023): each hides
#: an end-of-data marker that some servers honour and others do not.
SMUGGLING = [
    "\n.\r\n",
    "\r\n.\n",
    "\n.\n",
    "\r.\r",
    "\r\n.\r",
    "\r.\r\n",
    "\r\n\x00.\r\n",
    "\n.\r\nMAIL FROM:<evil@example.net>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n",
]


@pytest.mark.parametrize("sequence", SMUGGLING)
def test_smuggling_sequences_become_plain_crlf(sequence: str) -> None:
    """In text, html and attachments alike, every line ending on the wire is CRLF."""
    built = build_envelope(
        request(
            text=f"before{sequence}after",
            html=f"<p>before{sequence}after</p>",
            attachments=[{"filename": f"a{sequence.strip()[:1]}.txt", "content": "YQ=="}]
            if sequence.isprintable()
            else [],
        ),
        "job",
    ).data
    pairs = built.count(b"\r\n")
    assert built.count(b"\r") == pairs
    assert built.count(b"\n") == pairs


@pytest.mark.parametrize("data", [b"a\nb\r\n", b"a\rb\r\n", b"a\r\n.\nb\r\n", b"a\r\r\n"])
def test_a_bare_cr_or_lf_in_the_final_bytes_is_refused(data: bytes) -> None:
    """Whatever builds the message, bytes with a CR or LF outside a CRLF pair are not sent."""
    with pytest.raises(PermanentDeliveryError, match="bare CR or LF"):
        check_line_endings(data)
