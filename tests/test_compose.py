"""The fast serializer against the email package: the same message, as a reader sees it.

Generated requests (the strategies of ``test_properties``) are built both ways,
:func:`compose` and ``build_message(...).as_bytes()``, and both are parsed back.
Where the email package's writer is known to be wrong (the folding bugs of the
interpreters that ``test_properties`` detects at import; on 3.11.7 they also garble
long non-ASCII names in address lists), the fast bytes are held to the request.
"""

from __future__ import annotations

import base64
import email
import email.policy
import random
import re
from dataclasses import replace
from email.message import EmailMessage
from typing import Any, cast

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from trimail.delivery import compose as compose_module
from trimail.delivery import message as message_module
from trimail.delivery.compose import CHUNK_BYTES, compose
from trimail.delivery.message import (
    Envelope,
    _check_headers,
    build_envelope,
    build_message,
    check_line_endings,
)
from trimail.errors import PermanentDeliveryError
from trimail.models import SendRequest

from .test_properties import (
    PROPERTIES,
    STDLIB_ENCODES_LIST_COMMA,
    STDLIB_MISFOLDS_ENCODED_WORDS,
    WORDS,
    Box,
    Spec,
    addresses,
    body_as_sent,
    check_header_names,
    decode_words,
    filename_of,
    header_text,
    raw_header,
    specs,
    the_list_comma_bug_struck,
)

DATE = 1_700_000_000.0
VALID: dict[str, Any] = {"from": "Sender <sender@example.com>", "to": "rcpt@example.com"}


def request(**changes: Any) -> SendRequest:
    return SendRequest.model_validate({**VALID, "subject": "Hi", "text": "Body", **changes})


def parse(data: bytes) -> EmailMessage:
    return cast(EmailMessage, email.message_from_bytes(data, policy=email.policy.default))


def fast(req: SendRequest) -> bytes:
    data = compose(req, "job-id", DATE)
    assert data is not None, "expected the fast path"
    return data


def lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")


def check_wire(data: bytes, req: SendRequest) -> None:
    """CRLF only, lines within 998 octets, exactly the expected headers (read by the parser
    and by the production check), MIME parts with MIME headers only."""
    check_line_endings(data)
    assert max(len(line) for line in lines(data)) <= 998
    check_header_names(as_envelope(data), req)
    _check_headers(data, req)


def ascii_locals(spec: Spec) -> Spec:
    """The same request with every local part made ASCII, so that it takes the fast path."""

    def fix(box: Box) -> Box:
        local = box.local if box.local.isascii() else box.local.encode("punycode").decode()
        return replace(box, local=local)

    lists = {f: [fix(b) for b in getattr(spec, f)] for f in ("to", "cc", "bcc", "reply_to")}
    return replace(spec, sender=fix(spec.sender), **lists)


#: Blanks that folding cannot split: a long run, or the blanks after a long last word.
UNFOLDABLE = re.compile(r" {79,}|[^ ]{79,} +$")


def may_fall_back(req: SendRequest) -> bool:
    """The module docstring's fallback list, restated (for blanks: only maybe)."""
    shown = [req.sender, *req.to, *req.cc, *req.reply_to]
    texts = [req.subject, *req.headers.values(), *(m.name for m in shown)]
    long_names = [
        a.filename
        for a in req.attachments
        if not a.filename.isascii()
        and len(compose_module.quote(a.filename, safe=compose_module._ATTRIBUTE_CHARS)) > 980
    ]
    return (
        any(m.needs_smtputf8 for m in [*shown, *req.bcc])
        or any("=?" in text for text in [*texts, *(a.filename for a in req.attachments)])
        or bool(compose_module._STRUCTURED & {name.lower() for name in req.headers})
        or any(a.mime_type.startswith(("multipart/", "message/")) for a in req.attachments)
        or bool(long_names)
        or any(UNFOLDABLE.search(text) for text in texts)
    )


def text_parts(msg: EmailMessage) -> list[tuple[str, str]]:
    return [
        (part.get_content_subtype(), part.get_content())
        for part in msg.walk()
        if part.get_content_maintype() == "text" and not part.is_attachment()
    ]


def files(msg: EmailMessage) -> list[tuple[str, str, bytes]]:
    found = list(msg.iter_attachments()) if msg.is_multipart() else []
    return [(filename_of(f), f.get_content_type(), f.get_payload(decode=True)) for f in found]


def tree(msg: EmailMessage) -> list[tuple[str, str | None, str | None]]:
    return [
        (part.get_content_type(), part.get_param("charset"), part.get_content_disposition())
        for part in msg.walk()
    ]


def as_envelope(data: bytes) -> Envelope:
    return Envelope(sender="", recipients=(), data=data, smtputf8=False)


def ref_is_wrong(ref: bytes, field: str, want: str) -> bool:
    """Whether the email package misfolded this header (a known bug), read as RFC 2047 says."""
    got = decode_words(cast(str, raw_header(ref, field)), phrase=False)
    if got == want:
        return False
    assert STDLIB_MISFOLDS_ENCODED_WORDS, f"{field}: {got!r} != {want!r}"
    event(f"the reference misfolded {field}")
    return True


@settings(PROPERTIES, max_examples=100)
@given(st.one_of(specs().map(ascii_locals), specs()))
def test_compose_writes_what_the_email_package_means(spec: Spec) -> None:
    """Headers, names, addresses, MIME tree, texts and files read back the same both ways."""
    req = spec.request()
    data = compose(req, "job-id", DATE)
    event("fallback" if data is None else "fast")
    if data is None:
        assert may_fall_back(req)
        return
    check_wire(data, req)
    ref = build_message(req, "job-id", DATE).as_bytes()
    got, want = parse(data), parse(ref)
    assert [p.defects for p in got.walk()] == [[] for _ in got.walk()]
    assert [name.lower() for name in got] == [name.lower() for name in want]
    for field in ("Date", "Message-ID", "MIME-Version"):
        assert got[field] == want[field]

    for field, value in [("Subject", req.subject), *req.headers.items()]:
        value = value.lstrip(" ")
        assert decode_words(cast(str, raw_header(data, field)), phrase=False) == value
        assert str(got[field]) == value
        if not ref_is_wrong(ref, field, value):
            assert str(got[field]) == str(want[field])

    fields = {"From": [req.sender], "To": req.to, "Cc": req.cc, "Reply-To": req.reply_to}
    for field, mailboxes in fields.items():
        expected = [(m.name, m.smtp_address) for m in mailboxes]
        assert addresses(data, field) == expected, field
        if mailboxes and all(len(m.name.encode()) <= 42 for m in mailboxes):  # one word each
            # The email package's reader makes a blank and the Unicode blanks after it one
            # blank, even inside an encoded-word.
            read = [(re.sub(r" \s+", " ", name), addr) for name, addr in expected]
            assert [(a.display_name, a.addr_spec) for a in got[field].addresses] == read
        if addresses(ref, field) != expected:  # the email package's folding bugs
            assert STDLIB_ENCODES_LIST_COMMA or STDLIB_MISFOLDS_ENCODED_WORDS
            comma = the_list_comma_bug_struck(as_envelope(ref))
            event(f"the reference lost {field} " + ("to the list comma bug" if comma else "names"))

    assert tree(got) == tree(want)
    assert text_parts(got) == text_parts(want)
    wanted = [("plain", req.text), ("html", req.html)]
    assert text_parts(got) == [(sub, body_as_sent(b)) for sub, b in wanted if b is not None]
    assert files(got) == files(want)
    assert files(got) == [(a.filename, a.mime_type, a.content) for a in req.attachments]


blank_runs = st.integers(1, 100).map(" ".__mul__)
long_words = st.integers(60, 998).map("x".__mul__)
header_values = (
    st.lists(st.one_of(header_text(max_size=30), st.sampled_from(WORDS), blank_runs, long_words))
    .map("".join)
    .map(lambda value: value[:998])
    .filter(lambda value: "=?" not in value)
)


@settings(PROPERTIES, max_examples=200)
@given(name=st.sampled_from(["Subject", "Keywords", "X-" + "N" * 74]), value=header_values)
def test_unstructured_values_unfold_to_themselves(name: str, value: str) -> None:
    """Any value reads back exactly; lines fit 78 columns but for a long word or final blanks."""
    if name == "Subject" and not value.strip():
        value += "x"
    req = request(subject=value) if name == "Subject" else request(headers={name: value})
    data = compose(req, "job-id", DATE)
    if data is None:
        assert UNFOLDABLE.search(value)
        return
    check_wire(data, req)
    assert decode_words(cast(str, raw_header(data, name)), phrase=False) == value.lstrip(" ")
    assert str(parse(data)[name]) == value.lstrip(" ")
    head = data.partition(b"\r\n\r\n")[0].decode("ascii")
    field = re.search(rf"^{name}:.*?(?=\r\n\S)", head, re.MULTILINE | re.DOTALL)
    assert field is not None
    for n, line in enumerate(field[0].split("\r\n")):
        text = line.partition(": ")[2] if n == 0 else line
        assert len(line.rstrip(" ")) <= 78 or " " not in text.strip(" "), line  # trailing: kept


# -- fallbacks --------------------------------------------------------------------------------

ATTACHMENT = {"filename": "a.txt", "content": "aGk="}


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"to": "jürgen@example.de"}, id="smtputf8-to"),
        pytest.param({"bcc": "jürgen@example.de"}, id="smtputf8-bcc"),
        pytest.param({"subject": "=?utf-8?q?Gr=C3=BC=C3=9Fe?="}, id="pre-encoded-subject"),
        pytest.param({"headers": {"X-Tag": "a =?x"}}, id="encoded-word-like-header"),
        pytest.param({"to": "=?utf-8?q?x?= <a@example.com>"}, id="encoded-word-like-name"),
        pytest.param({"headers": {"Sender": "a@example.com"}}, id="structured-sender"),
        pytest.param({"headers": {"Resent-Date": "x"}}, id="structured-resent-date"),
        pytest.param(
            {"attachments": [{**ATTACHMENT, "filename": "=?utf-8?q?x?=.txt"}]}, id="ew-filename"
        ),
        pytest.param({"attachments": [{**ATTACHMENT, "filename": "é" * 200}]}, id="rfc2231-long"),
        pytest.param({"headers": {"X-Tag": "a" + " " * 990 + "é"}}, id="long-blank-run"),
    ],
)
def test_what_compose_leaves_to_the_email_package(changes: dict[str, Any]) -> None:
    """Each fallback of the module docstring returns None, and the reference builds it."""
    req = request(**changes)
    assert compose(req, "job-id", DATE) is None
    check_wire(build_message(req, "job-id", DATE).as_bytes(), req)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"subject": "Grüße aus München 🎉 日本語"}, id="non-ascii-subject"),
        pytest.param({"to": "Zoë Ågren <zoe@bücher.de>"}, id="non-ascii-name-idn"),
        pytest.param({"to": '"Lee, Ann" <l@example.com>'}, id="quoted-name"),
        pytest.param({"subject": "word " * 190}, id="long-subject"),
        pytest.param({"text": "ünïcödé\n" * 100, "html": "<p>" + "x" * 500}, id="qp"),
        pytest.param({"text": "日本語 " * 200}, id="base64-text"),
        pytest.param(
            {"attachments": [{**ATTACHMENT, "filename": "résumé 2024.pdf"}]}, id="rfc2231"
        ),
        pytest.param(
            {"attachments": [{**ATTACHMENT, "filename": 'a "b" \\c;d.txt'}]}, id="quoted-filename"
        ),
    ],
)
def test_typical_requests_take_the_fast_path(changes: dict[str, Any]) -> None:
    """Non-ASCII names, subjects, texts and filenames, long lines: all composed, none fall back."""
    req = request(**changes)
    check_wire(fast(req), req)


@pytest.mark.parametrize("filename", ["mail.eml", "page.mht", "x.bmed"])
def test_an_attachment_of_a_guessed_composite_type_is_sent(filename: str) -> None:
    """A name that guesses message/* or multipart/* travels as application/octet-stream.

    (The email package wrote such a part with a bare LF, which check_line_endings
    refuses: the job failed for good.)
    """
    req = request(attachments=[{**ATTACHMENT, "filename": filename}])
    data = fast(req)
    check_wire(data, req)
    (part,) = parse(data).iter_attachments()
    assert (part.get_content_type(), part.get_filename()) == ("application/octet-stream", filename)


# -- examples -------------------------------------------------------------------------------


def test_a_5_mib_attachment_round_trips_in_76_column_lines() -> None:
    """A 5 MiB attachment is base64 in lines of 76, encoded in pieces, and decodes unchanged."""
    payload = random.Random(5).randbytes(5 * 2**20)
    attachment = {"filename": "big.bin", "content": base64.b64encode(payload).decode()}
    req = request(attachments=[attachment])
    data = fast(req)
    check_wire(data, req)
    (part,) = parse(data).iter_attachments()
    assert part.get_payload(decode=True) == payload
    encoded = data.partition(b"Content-Disposition: attachment")[2].split(b"\r\n\r\n")[1]
    widths = {len(line) for line in lines(encoded)[:-2]}
    assert widths == {76}
    assert len(payload) > 2 * CHUNK_BYTES  # so more than one piece


def test_a_998_character_subject_without_blanks_becomes_encoded_words() -> None:
    """A subject that cannot be folded is written as encoded-words that fit 78 columns."""
    subject = "x" * 998
    req = request(subject=subject)
    data = fast(req)
    check_wire(data, req)
    head = data.partition(b"\r\n\r\n")[0]
    assert max(len(line) for line in lines(head)) <= 78
    assert parse(data)["Subject"] == subject


def test_a_long_url_in_an_extra_header_stays_a_url() -> None:
    """A List-Unsubscribe URL longer than a line is written as it is, not as encoded-words."""
    url = "<https://example.com/unsubscribe/" + "abcdefgh" * 12 + ">"
    data = fast(request(headers={"List-Unsubscribe": url, "List-Unsubscribe-Post": "One-Click"}))
    assert raw_header(data, "List-Unsubscribe") == url
    assert f"List-Unsubscribe: {url}\r\n".encode() in data


def test_fifty_recipients_with_non_ascii_names() -> None:
    """Fifty named recipients are folded after commas, each name and address intact."""
    names = [f"Zoë Ågren-{i} 日本" for i in range(25)] + [f"Lee, Ann {i}" for i in range(25)]
    to = [f'"{name}" <r{i}@bücher.de>' for i, name in enumerate(names)]
    req = request(to=to)
    data = fast(req)
    check_wire(data, req)
    assert max(len(line) for line in lines(data.partition(b"\r\n\r\n")[0])) <= 78
    want = [(name, f"r{i}@xn--bcher-kva.de") for i, name in enumerate(names)]
    assert addresses(data, "To") == want
    got = [(a.display_name, a.addr_spec) for a in parse(data)["To"].addresses]
    assert got == want


def test_mixed_line_breaks_and_a_leading_dot_in_the_text() -> None:
    """CR, LF and CRLF all become CRLF, and a line starting with a dot keeps it (smtplib stuffs)."""
    req = request(text="one\rtwo\r\nthree\n.four\n..five")
    data = fast(req)
    check_wire(data, req)
    assert data.endswith(b"\r\n\r\none\r\ntwo\r\nthree\r\n.four\r\n..five\r\n")
    assert parse(data).get_content() == "one\r\ntwo\r\nthree\r\n.four\r\n..five\r\n"


def test_boundary_like_text_in_a_7bit_body() -> None:
    """Text holding ``--=_`` and the first boundary drawn is kept, and another boundary is used."""
    taken = "=_" + "0" * 24
    draws = iter(["0" * 24, "1" * 24, "2" * 24])
    text = f"--=_\r\n--{taken}\r\n--{taken}--\r\n"
    req = request(text=text, html="<p>x</p>", attachments=[ATTACHMENT])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compose_module.secrets, "token_hex", lambda _: next(draws))
        data = fast(req)
    check_wire(data, req)
    msg = parse(data)
    assert msg.get_boundary() == "=_" + "2" * 24
    assert msg.get_payload(0).get_boundary() == "=_" + "1" * 24
    assert text_parts(msg)[0] == ("plain", body_as_sent(text))
    assert [(name, data) for name, _, data in files(msg)] == [("a.txt", b"hi")]


def test_long_lines_and_big_texts_are_encoded_in_pieces() -> None:
    """A non-ASCII text over one piece is quoted-printable; one line over a piece is base64."""
    many_lines = "Grüße, a line of text that is mostly ASCII.\n"
    for text, cte in [
        (many_lines * 5000, "quoted-printable"),
        ("é" * (CHUNK_BYTES + 10), "base64"),
    ]:
        req = request(text=text)
        data = fast(req)
        check_wire(data, req)
        msg = parse(data)
        assert msg["Content-Transfer-Encoding"] == cte
        assert msg.get_content() == body_as_sent(text)


def test_the_header_check_reads_mime_part_heads() -> None:
    """A header slipped into a MIME part head, or a multipart without a boundary, is refused."""
    req = request(html="<p>x</p>")
    data = fast(req)
    bad = data.replace(b"Content-Type: text/html", b"Bcc: v@example.com\r\nContent-Type: text/html")
    with pytest.raises(PermanentDeliveryError, match="a MIME part has"):
        _check_headers(bad, req)
    unbounded = re.sub(rb'; boundary="[^"]+"', b"", data, count=1)
    with pytest.raises(PermanentDeliveryError, match="no boundary"):
        _check_headers(unbounded, req)


@pytest.mark.parametrize(
    ("tail", "bare"),
    [(b"\r\nb", False), (b"\rb", True), (b"\r", True), (b"\r\r\n", True), (b"x\nb", True)],
)
def test_line_endings_are_checked_across_pieces(tail: bytes, bare: bool) -> None:
    """A CRLF split by a piece boundary is a pair; a bare CR or LF there is still refused."""
    data = b"a" * (CHUNK_BYTES - 1) + tail
    if bare:
        with pytest.raises(PermanentDeliveryError, match="bare CR or LF"):
            check_line_endings(data)
    else:
        check_line_endings(data)


@pytest.mark.parametrize(
    "to",
    ['"  Ann  " <a@example.com>', '"' + '\\"' * 199 + '" <a@example.com>', '"é " <a@example.com>'],
)
def test_display_names_are_written_as_given(to: str) -> None:
    """Blanks at the ends of a quoted name and a name of 199 quotes survive (the email package
    drops the blanks, and loses the quotes)."""
    req = request(to=to)
    data = fast(req)
    check_wire(data, req)
    assert addresses(data, "To") == [(req.to[0].name, "a@example.com")]


def test_build_envelope_composes_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """build_envelope sends compose's bytes when there are some, else the email package's."""
    req = request(subject="Grüße")
    assert build_envelope(req, "job-id", DATE).data == fast(req)
    monkeypatch.setattr(message_module, "compose", lambda *args: None)
    reference = build_message(req, "job-id", DATE).as_bytes()
    assert build_envelope(req, "job-id", DATE).data == reference
    assert build_envelope(request(to="jürgen@example.de"), "job-id", DATE).smtputf8
