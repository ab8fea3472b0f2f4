"""Delivery against an SMTP server nobody here wrote: Postfix's ``smtp-sink``.

``smtp-sink`` (Debian package ``postfix``; CI installs it) is a test server that
misbehaves on its command line: ``-w N`` waits N seconds before answering DATA,
``-H N`` stops reading for N seconds once the message starts, ``-r``/``-f`` answer
the named commands with a soft (4xx) or hard (5xx) reject, ``-q`` hangs up on them
without a reply, ``-t N`` drops a connection idle for N seconds. ``-d`` dumps every
transaction to a file (its own ``X-`` header lines, then the message as received)
and ``-c`` prints running counters of sessions, QUITs and messages.

Each test starts its own ``smtp-sink`` on 127.0.0.1 at a free port; the fixture
stops every one by its PID. Every accepted job must end in exactly one final log
line. Backoff runs on trio's mock clocks. Without ``/usr/sbin/smtp-sink`` the
module is skipped.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import pytest
import trio

from trimail.config import SMTPSecurity
from trimail.delivery.message import build_envelope
from trimail.delivery.retry import RetryPolicy
from trimail.delivery.transport import SMTPTransport, local_hostname
from trimail.models import SendRequest

from .conftest import Delivery, Submitted, drained, final_lines, running_dispatcher, wait_until

SMTP_SINK = Path("/usr/sbin/smtp-sink")
HOST = "127.0.0.1"
#: Three attempts, 10 s then 20 s apart (the jitter always draws its maximum).
THREE_TRIES = RetryPolicy(base_delay=10, max_delay=1000, max_attempts=3, uniform=lambda lo, hi: hi)

pytestmark = pytest.mark.skipif(
    not SMTP_SINK.exists(),
    reason="/usr/sbin/smtp-sink is missing: install Debian's postfix package (see .ci/run)",
)


@dataclass
class Dump:
    """One transaction as ``smtp-sink -d`` wrote it: its envelope, then the message."""

    mail_from: str
    rcpt_tos: list[str]
    proto: str
    helo: str | None
    content: bytes  # the message as received; smtp-sink writes LF line endings

    @property
    def message(self) -> EmailMessage:
        return cast(
            EmailMessage, email.message_from_bytes(self.content, policy=email.policy.default)
        )

    @classmethod
    def parse(cls, data: bytes) -> Dump:
        """Split smtp-sink's ``X-`` lines and three-line ``Received:`` from the message."""
        lines = data.split(b"\n")
        fields: dict[str, list[str]] = {}
        index = 0
        while not lines[index].startswith(b"Received: "):
            name, _, value = lines[index].decode().partition(": ")
            fields.setdefault(name, []).append(value)
            index += 1
        index += 1
        while lines[index][:1] in (b"\t", b" "):  # the Received header's continuation lines
            index += 1
        content = b"\n".join(lines[index:])
        assert content.endswith(b"\n\n"), "smtp-sink ends each dump with an empty line"
        return cls(
            mail_from=fields["X-Mail-Args"][0].split()[0].strip("<>"),
            rcpt_tos=[value.split()[0].strip("<>") for value in fields.get("X-Rcpt-Args", [])],
            proto=fields["X-Client-Proto"][0],
            helo=fields.get("X-Helo-Args", [None])[0],
            content=content[:-1],
        )


def _listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` listens on 127.0.0.1:port; asks the kernel, never connects."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        next(table)
        sockets = {f"socket:[{f[9]}]" for f in map(str.split, table) if f[1:4:2] == [wanted, "0A"]}
    with contextlib.suppress(OSError):  # the process may be gone
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(fd.path) in sockets:
                    return True
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class SMTPSink:
    """One ``smtp-sink`` process, its dump directory and its counters."""

    def __init__(self, flags: tuple[str, ...], port: int, workdir: Path) -> None:
        self.flags = flags
        self.port = port
        self.workdir = workdir
        self._counters = workdir / "counters"
        self._stderr = workdir / "stderr"
        command = [str(SMTP_SINK), "-c", "-d", f"{workdir / 'mail'}/"]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]  # smtp-sink refuses to run as root without it
        command += [*flags, f"{HOST}:{port}", "16"]
        with self._counters.open("wb") as out, self._stderr.open("wb") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err)

    def wait_listening(self, timeout: float = 5.0) -> bool:
        """True once listening; False if it exited (a fatal error takes it 1 s to exit)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _listening(self.process.pid, self.port):
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.005)
        raise AssertionError(f"smtp-sink {self.flags} did not listen within {timeout} s")

    @property
    def stderr(self) -> str:
        return self._stderr.read_text(errors="replace")

    def stop(self) -> None:
        """End the process by its PID (SIGTERM, then SIGKILL); safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def counters(self) -> dict[str, int]:
        """The last complete ``-c`` record: ended sessions, QUITs, messages ended with '.'."""
        records = self._counters.read_bytes().decode().split("\r")[:-1]  # each ends with CR
        if not records:
            return {"sess": 0, "quit": 0, "mesg": 0}
        return {name: int(value) for name, value in (f.split("=") for f in records[-1].split())}

    def wait_counters(self, expected: dict[str, int], timeout: float = 5.0) -> dict[str, int]:
        """The counters once they equal ``expected``, or as they are after ``timeout`` s.

        smtp-sink prints them a moment after it answers, and counts a session as it ends.
        """
        deadline = time.monotonic() + timeout
        while (counters := self.counters()) != expected and time.monotonic() < deadline:
            time.sleep(0.005)
        return counters

    def dumps(self) -> list[Dump]:
        """Each transaction whose message arrived (smtp-sink also leaves empty files for
        transactions that ended before the message, which are skipped)."""
        directory = self.workdir / "mail"  # made by smtp-sink at its first transaction
        if not directory.exists():
            return []
        files = sorted(directory.iterdir(), key=lambda f: f.stat().st_mtime_ns)
        return [Dump.parse(data) for data in (f.read_bytes() for f in files) if data]


@pytest.fixture
def smtp_sink() -> Iterator[Callable[..., SMTPSink]]:
    """Start ``smtp-sink`` with the given flags, at a free port or at ``port``.

    Every process it started is stopped by its PID and its files removed when the
    test ends, whatever happened.
    """
    started: list[SMTPSink] = []

    def start(*flags: str, port: int | None = None) -> SMTPSink:
        for _ in range(3):  # another process may take a free port before smtp-sink binds it
            workdir = Path(tempfile.mkdtemp(prefix="trimail-smtp-sink-"))
            if os.geteuid() == 0:
                shutil.chown(workdir, "nobody")  # it writes its dumps as nobody
            sink = SMTPSink(flags, port or _free_port(), workdir)
            started.append(sink)
            if sink.wait_listening():
                return sink
            if port is not None or "in use" not in sink.stderr:
                break
        raise AssertionError(f"smtp-sink {flags} failed to start: {sink.stderr}")

    try:
        yield start
    finally:
        for sink in started:
            sink.stop()
            shutil.rmtree(sink.workdir, ignore_errors=True)


async def counters_reach(sink: SMTPSink, **expected: int) -> None:
    """Assert the sink's counters reach ``expected`` within 5 s of real time."""
    assert await trio.to_thread.run_sync(sink.wait_counters, expected) == expected


def request(*to: str, **changes: Any) -> SendRequest:
    body: dict[str, Any] = {
        "from": "sender@example.com",
        "to": list(to) or ["rcpt@example.com"],
        "subject": "Hi",
        "text": "Body",
    }
    body.update(changes)
    return SendRequest.model_validate(body)


@asynccontextmanager
async def running(
    sink: SMTPSink, *, timeout: float = 5.0, username: str | None = None, **kwargs: Any
) -> AsyncIterator[Delivery]:
    """A started dispatcher delivering to ``sink``'s port, shut down on exit."""
    kwargs.setdefault("retry", THREE_TRIES)
    kwargs.setdefault("workers", 1)
    port = sink.port  # a sink restarted at this port is still the provider

    def factory() -> SMTPTransport:
        return SMTPTransport(
            HOST,
            port,
            security=SMTPSecurity.NONE,
            timeout=timeout,
            username=username,
            password="secret" if username else None,
        )

    async with running_dispatcher(factory, **kwargs) as dispatcher:
        yield dispatcher


def attempts(caplog: pytest.LogCaptureFixture, job: Submitted) -> list[Any]:
    return [
        r
        for r in caplog.records
        if getattr(r, "event", "") == "attempt" and getattr(r, "job_id", "") == job.id
    ]


def final_message(caplog: pytest.LogCaptureFixture, job: Submitted) -> str:
    return next(
        r.getMessage()
        for r in caplog.records
        if getattr(r, "event", "") == "final" and getattr(r, "job_id", "") == job.id
    )


def message_job_id(dump: Dump) -> str:
    return str(dump.message["Message-ID"]).strip("<>").partition("@")[0]


# -- delivery ----------------------------------------------------------------------


def test_plain_delivery_arrives_intact(smtp_sink: Callable[..., SMTPSink]) -> None:
    """The sink gets every recipient in the envelope, no Bcc in the message, the bytes intact."""
    sink = smtp_sink()
    text = "Hello.\n.\n.leading dot\n..two dots\nBye.\n"  # a lone '.' would end DATA unstuffed
    sent = build_envelope(
        request(
            "Ann <to@example.com>",
            cc=["cc@example.com"],
            bcc=["hidden@example.com"],
            subject="Grüße from trimail",
            text=text,
        ),
        "0123456789abcdef0123456789abcdef",
    )
    transport = SMTPTransport(HOST, sink.port, security=SMTPSecurity.NONE, timeout=5)
    result = transport.send(sent)
    transport.close()

    assert result.accepted == ("to@example.com", "cc@example.com", "hidden@example.com")
    [dump] = sink.dumps()
    assert dump.mail_from == "sender@example.com"
    assert dump.rcpt_tos == ["to@example.com", "cc@example.com", "hidden@example.com"]
    assert dump.proto == "ESMTP"
    assert dump.helo == local_hostname()
    assert dump.content == sent.data.replace(b"\r\n", b"\n")  # dot-stuffing undone exactly
    message = dump.message
    assert message["To"].addresses[0].display_name == "Ann"
    assert message["To"].addresses[0].addr_spec == "to@example.com"
    assert message["Cc"] == "cc@example.com"
    assert message["Subject"] == "Grüße from trimail"
    assert message["Message-ID"] == "<0123456789abcdef0123456789abcdef@example.com>"
    assert "Bcc" not in message
    assert b"hidden" not in dump.content
    assert message.get_content() == text
    expected = {"sess": 1, "quit": 1, "mesg": 1}
    assert sink.wait_counters(expected) == expected


async def test_jobs_share_one_connection(
    smtp_sink: Callable[..., SMTPSink], caplog: pytest.LogCaptureFixture
) -> None:
    """Five jobs through one worker are five transactions in one session, ended by QUIT."""
    sink = smtp_sink()
    async with running(sink) as dispatcher:
        jobs = [await dispatcher.submit(request(f"r{n}@example.com")) for n in range(5)]
        await drained(dispatcher)

    assert final_lines(caplog) == {job.id: ["sent"] for job in jobs}
    assert [(await dispatcher.attempts(job.id)) for job in jobs] == [1] * 5
    await counters_reach(sink, sess=1, quit=1, mesg=5)
    dumps = sink.dumps()
    assert sorted(message_job_id(d) for d in dumps) == sorted(job.id for job in jobs)
    assert sorted(d.rcpt_tos[0] for d in dumps) == [f"r{n}@example.com" for n in range(5)]


async def test_idle_connection_dropped_by_the_sink_is_reopened(
    smtp_sink: Callable[..., SMTPSink], caplog: pytest.LogCaptureFixture
) -> None:
    """A connection smtp-sink closed after 1 s idle (-t 1) is reopened without a failed attempt."""
    sink = smtp_sink("-t", "1")
    async with running(sink) as dispatcher:
        first = await dispatcher.submit(request())
        await drained(dispatcher)
        await counters_reach(sink, sess=1, quit=0, mesg=1)  # the sink hung up on it
        second = await dispatcher.submit(request())
        await drained(dispatcher)

    assert final_lines(caplog) == {first.id: ["sent"], second.id: ["sent"]}
    assert ((await dispatcher.attempts(first.id)), (await dispatcher.attempts(second.id))) == (1, 1)
    await counters_reach(sink, sess=2, quit=1, mesg=2)


async def test_refused_ehlo_falls_back_to_helo(
    smtp_sink: Callable[..., SMTPSink], caplog: pytest.LogCaptureFixture
) -> None:
    """A server that answers EHLO with a 5xx gets HELO, then the mail, in plain SMTP."""
    sink = smtp_sink("-f", "EHLO")
    async with running(sink) as dispatcher:
        job = await dispatcher.submit(request())
        await drained(dispatcher)

    assert final_lines(caplog) == {job.id: ["sent"]}
    [dump] = sink.dumps()
    assert (dump.proto, dump.helo) == ("SMTP", local_hostname())


# -- slow servers --------------------------------------------------------------------


async def test_data_delay_shorter_than_the_timeout_is_waited_out(
    smtp_sink: Callable[..., SMTPSink], caplog: pytest.LogCaptureFixture
) -> None:
    """smtp-sink answering DATA after 1 s, under a 5 s timeout, costs time, not an attempt."""
    sink = smtp_sink("-w", "1")
    started = time.monotonic()
    async with running(sink, timeout=5) as dispatcher:
        job = await dispatcher.submit(request())
        await drained(dispatcher)

    assert time.monotonic() - started >= 1.0
    assert final_lines(caplog) == {job.id: ["sent"]}
    assert (await dispatcher.attempts(job.id)) == 1
    assert [message_job_id(d) for d in sink.dumps()] == [job.id]


# The write stall needs more bytes than the kernel buffers between client and sink hold
# (about 4 MiB here), else it times out reading the reply instead.
BIG_TEXT = ("x" * 70 + "\n") * 200_000  # 14 MB


@pytest.mark.parametrize(
    ("flags", "text"),
    [
        pytest.param(("-w", "2"), "Body\n", id="no-reply-to-DATA"),
        pytest.param(("-H", "2", "-T", "4096"), BIG_TEXT, id="stops-reading-the-message"),
    ],
)
async def test_stall_longer_than_the_timeout_is_retried(
    flags: tuple[str, ...],
    text: str,
    smtp_sink: Callable[..., SMTPSink],
    mock_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stall past the SMTP timeout is a transient failure; the retry reaches a healthy sink."""
    stalling = smtp_sink(*flags)
    async with running(stalling, timeout=0.3) as dispatcher:
        job = await dispatcher.submit(request(text=text))
        await wait_until(lambda: dispatcher.counts(retrying=1))
        stalling.stop()
        healthy = smtp_sink(port=stalling.port)
        mock_clock.jump(THREE_TRIES.backoff(1))
        await drained(dispatcher)

    assert final_lines(caplog) == {job.id: ["sent"]}
    assert [r.result for r in attempts(caplog, job)] == ["transient failure", "delivered"]
    assert stalling.counters()["mesg"] == 0  # the stalled message never ended
    [dump] = healthy.dumps()
    assert message_job_id(dump) == job.id
    assert dump.message.get_content() == text
    # smtplib reports both stalls as SMTPServerDisconnected; the log must say timeout.
    assert "timed out waiting for 127.0.0.1:" in attempts(caplog, job)[0].getMessage()


# -- rejects and hang-ups --------------------------------------------------------------


@pytest.mark.parametrize("stage", ["CONNECT", "MAIL", "RCPT", "DATA", "."])
async def test_soft_reject_is_retried_until_the_last_attempt(
    stage: str,
    smtp_sink: Callable[..., SMTPSink],
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 4xx at any stage is retried after 10 s and 20 s; the third fails the job, citing it."""
    sink = smtp_sink("-r", stage, "-b", "451 4.7.1 smtp-sink says later")
    async with running(sink) as dispatcher:
        start = trio.current_time()
        job = await dispatcher.submit(request())
        await drained(dispatcher)
        assert trio.current_time() - start == pytest.approx(30, abs=0.5)

    assert final_lines(caplog) == {job.id: ["failed"]}
    assert [r.result for r in attempts(caplog, job)] == ["transient failure"] * 3
    assert [r.smtp_code for r in attempts(caplog, job)] == [451] * 3
    assert "451 4.7.1 smtp-sink says later" in final_message(caplog, job)
    if stage == "RCPT":  # every recipient refused: RSET, and the connection is kept
        await counters_reach(sink, sess=1, quit=1, mesg=0)
    else:  # after any other failure the connection is dropped, never reused
        await counters_reach(sink, sess=3, quit=0, mesg=3 if stage == "." else 0)


@pytest.mark.parametrize("stage", ["CONNECT", "EHLO,HELO", "MAIL", "RCPT", "DATA", "."])
async def test_hard_reject_fails_after_one_attempt(
    stage: str,
    smtp_sink: Callable[..., SMTPSink],
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 5xx at any stage fails the job at once, with the server's reply in its final line."""
    sink = smtp_sink("-f", stage, "-B", "554 5.7.1 smtp-sink says no")
    async with running(sink) as dispatcher:
        job = await dispatcher.submit(request())
        await drained(dispatcher)

    assert final_lines(caplog) == {job.id: ["failed"]}
    assert (await dispatcher.attempts(job.id)) == 1
    assert [r.smtp_code for r in attempts(caplog, job)] == [554]
    assert "554 5.7.1 smtp-sink says no" in final_message(caplog, job)
    # Dropped after the failure, except when every recipient was refused (then RSET).
    await counters_reach(
        sink, sess=1, quit=1 if stage == "RCPT" else 0, mesg=1 if stage == "." else 0
    )


@pytest.mark.parametrize("stage", ["CONNECT", "EHLO", "MAIL", "RCPT", "DATA", "."])
async def test_hang_up_is_retried_until_the_last_attempt(
    stage: str,
    smtp_sink: Callable[..., SMTPSink],
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hang-up without a reply (-q) at any stage is transient: three attempts, then failed."""
    sink = smtp_sink("-q", stage)
    async with running(sink) as dispatcher:
        job = await dispatcher.submit(request())
        await drained(dispatcher)

    assert final_lines(caplog) == {job.id: ["failed"]}
    assert [r.result for r in attempts(caplog, job)] == ["transient failure"] * 3
    if stage == ".":  # the outcome is unknown, and the line says so
        assert final_message(caplog, job).endswith(
            f"the connection ended after the end of the message was sent to "
            f"127.0.0.1:{sink.port}; the provider may already have it"
        )
    else:
        assert final_message(caplog, job).endswith(f"127.0.0.1:{sink.port} closed the connection")
    await counters_reach(sink, sess=3, quit=0, mesg=3 if stage == "." else 0)
    if stage == ".":
        # The sink had the whole message each time but never said so: SMTP gives the
        # client no way to tell, so it must retry, and these duplicates are allowed.
        assert [message_job_id(d) for d in sink.dumps()] == [job.id] * 3


async def test_refused_rset_does_not_poison_the_connection(
    smtp_sink: Callable[..., SMTPSink],
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When RSET after refused recipients gets a 4xx, retries still see only the 4xx."""
    sink = smtp_sink("-r", "RCPT,RSET", "-b", "451 4.7.1 smtp-sink says later")
    async with running(sink) as dispatcher:
        job = await dispatcher.submit(request())
        await drained(dispatcher)

    assert final_lines(caplog) == {job.id: ["failed"]}
    assert [r.smtp_code for r in attempts(caplog, job)] == [451] * 3
    assert "451 4.7.1 smtp-sink says later" in final_message(caplog, job)


async def test_hang_up_at_rset_keeps_the_refusals(
    smtp_sink: Callable[..., SMTPSink],
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every recipient refused with a 5xx fails the job at once, even if RSET then hangs up."""
    sink = smtp_sink("-f", "RCPT", "-B", "550 5.1.1 no such user", "-q", "RSET")
    async with running(sink) as dispatcher:
        job = await dispatcher.submit(request())
        await drained(dispatcher)

    assert final_lines(caplog) == {job.id: ["failed"]}
    assert (await dispatcher.attempts(job.id)) == 1
    assert "550 5.1.1 no such user" in final_message(caplog, job)


# -- what smtp-sink does not offer ---------------------------------------------------


async def test_non_ascii_local_part_fails_without_smtputf8(
    smtp_sink: Callable[..., SMTPSink],
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """smtp-sink offers no SMTPUTF8: a non-ASCII mailbox fails at once, before MAIL FROM."""
    sink = smtp_sink()
    async with running(sink) as dispatcher:
        job = await dispatcher.submit(request("pelé@example.com"))
        await drained(dispatcher)

    assert final_lines(caplog) == {job.id: ["failed"]}
    assert (await dispatcher.attempts(job.id)) == 1
    assert "SMTPUTF8" in final_message(caplog, job)
    await counters_reach(sink, sess=1, quit=0, mesg=0)
    assert sink.dumps() == []


async def test_auth_answered_with_250_fails_once(
    smtp_sink: Callable[..., SMTPSink],
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """smtp-sink answers AUTH with 250, not 235: the job fails once, quoting that reply."""
    sink = smtp_sink()
    async with running(sink, username="trimail") as dispatcher:
        job = await dispatcher.submit(request())
        await drained(dispatcher)

    assert final_lines(caplog) == {job.id: ["failed"]}
    assert (await dispatcher.attempts(job.id)) == 1
    assert "SMTP authentication failed (250 2.0.0 Ok)" in final_message(caplog, job)
    await counters_reach(sink, sess=1, quit=0, mesg=0)
