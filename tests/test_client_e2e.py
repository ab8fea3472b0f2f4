"""The agent-facing features over real HTTP against ``trimail serve`` processes.

Idempotency, job status, the client, ``trimail send``, ``trimail tool`` and the
examples, each against a running service.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema
import pytest
import trio

from trimail.client import AsyncClient, Client

from .serving import MAIL, Service, start, wait_for
from .smtpserver import SMTPTestServer

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"Authorization": "Bearer alpha"}


@pytest.fixture
def service(services: list[Service], tmp_path: Path, smtp_server: SMTPTestServer) -> str:
    """trimail serve with two API keys, delivering to the test SMTP server; its URL."""
    started = start(
        services, tmp_path, "--port", "0", "--smtp-host", "127.0.0.1",
        "--smtp-port", str(smtp_server.port), "--smtp-security", "none",
        "--api-keys", "alpha,beta", "--shutdown-grace", "1",
    )  # fmt: skip
    return started.wait_ready()


def idle(url: str) -> bool:
    return httpx.get(f"{url}/healthz", timeout=10).json()["outstanding"] == 0


async def test_fifty_concurrent_requests_with_one_key_send_one_mail(
    service: str, smtp_server: SMTPTestServer
) -> None:
    """50 requests at once with one Idempotency-Key: one mail; each answer the id or a 409."""
    headers = {**KEYS, "Idempotency-Key": "one-key-for-all"}
    answers: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=service, timeout=30) as client:

        async def post() -> None:
            answers.append(await client.post("/email/send", json=MAIL, headers=headers))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(post)
    ids = {a.json()["id"] for a in answers if a.status_code == 202}
    assert len(ids) == 1
    others = {(a.status_code, a.json()["error"]["code"]) for a in answers if a.status_code != 202}
    assert others <= {(409, "concurrent_idempotent_requests")}
    await trio.to_thread.run_sync(wait_for, lambda: idle(service))
    assert len(smtp_server.received) == 1


def test_status_over_http_is_private(service: str, smtp_server: SMTPTestServer) -> None:
    """GET /email/{id} shows sent to its creator and 404 to another key."""
    job_id = httpx.post(f"{service}/email/send", json=MAIL, headers=KEYS).json()["id"]
    wait_for(lambda: idle(service))
    mine = httpx.get(f"{service}/email/{job_id}", headers=KEYS)
    assert (mine.status_code, mine.json()["status"]) == (200, "sent")
    theirs = httpx.get(f"{service}/email/{job_id}", headers={"Authorization": "Bearer beta"})
    assert theirs.status_code == 404


def test_client_sends_and_follows_a_job(service: str, smtp_server: SMTPTestServer) -> None:
    """Client.send returns the job; Client.status reads it to sent."""
    with Client(service, "alpha") as client:
        job = client.send(from_="svc@example.com", to=["a@example.com"], subject="s", text="t")
        wait_for(lambda: client.status(job.id).status == "sent")
    assert smtp_server.received[0].rcpt_tos == ["a@example.com"]


def test_async_client_under_asyncio(service: str, smtp_server: SMTPTestServer) -> None:
    """AsyncClient works under asyncio as well as trio."""

    async def main() -> list[str]:
        async with AsyncClient(service, "alpha") as client:
            jobs = await client.send_batch([MAIL, MAIL])
            return [job.id for job in jobs]

    assert len(set(asyncio.run(main()))) == 2
    wait_for(lambda: len(smtp_server.received) == 2)


def run(*args: str, url: str, **kwargs: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIMAIL_")}
    env.update({"TRIMAIL_URL": url, **kwargs})
    return subprocess.run(
        args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False
    )


def test_send_command_exit_status_and_json(service: str, smtp_server: SMTPTestServer) -> None:
    """trimail send prints one JSON line: 0 when queued, 1 when refused, 3 when unreachable."""
    trimail = [sys.executable, "-m", "trimail", "send"]
    ok = run(*trimail, "--to", "a@example.com", "--from", "s@example.com", "--subject", "s",
             "--text", "t", url=service, TRIMAIL_API_KEY="alpha")  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["status"] == "queued"
    bad = run(*trimail, "--to", "nope", "--subject", "s", "--text", "t", url=service,
              TRIMAIL_API_KEY="alpha")  # fmt: skip
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["error"]["code"] == "validation_error"
    wrong_key = run(*trimail, "--to", "a@example.com", "--subject", "s", "--text", "t",
                    url=service, TRIMAIL_API_KEY="wrong")  # fmt: skip
    assert json.loads(wrong_key.stdout)["error"]["code"] == "unauthorized"
    down = run(*trimail, "--to", "a@example.com", "--subject", "s", "--text", "t",
               url="http://127.0.0.1:9")  # fmt: skip
    assert down.returncode == 3
    assert json.loads(down.stdout)["error"]["code"] == "connection_failed"


def test_send_and_status_wait_for_the_outcome(
    service: str, smtp_server: SMTPTestServer, tmp_path: Path
) -> None:
    """--wait prints the final status (exit 0 when sent, 1 when failed); bodies come from
    @FILE or stdin; a missing attachment is a usage error in one line of JSON."""
    trimail = [sys.executable, "-m", "trimail"]
    page = tmp_path / "page.html"
    page.write_text("<p>from a file</p>")
    sent = subprocess.run(
        [*trimail, "send", "--to", "a@example.com", "--from", "s@example.com", "--subject", "s",
         "--text", "@-", "--html", f"@{page}", "--wait"],
        input="from stdin", capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
        env={**os.environ, "TRIMAIL_URL": service, "TRIMAIL_API_KEY": "alpha"},
    )  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    job = json.loads(sent.stdout)
    assert (job["status"], job["attempts"]) == ("sent", 1)
    mail = smtp_server.received[0].message
    assert mail.get_body(("plain",)).get_content().strip() == "from stdin"
    assert mail.get_body(("html",)).get_content().strip() == "<p>from a file</p>"
    again = run(*trimail, "status", job["id"], "--wait", url=service, TRIMAIL_API_KEY="alpha")
    assert (again.returncode, json.loads(again.stdout)["status"]) == (0, "sent")
    smtp_server.fail("RCPT", "550 5.1.1 no such user")
    failed = run(*trimail, "send", "--to", "gone@example.com", "--from", "s@example.com",
                 "--subject", "s", "--text", "t", "--wait", url=service,
                 TRIMAIL_API_KEY="alpha")  # fmt: skip
    assert (failed.returncode, json.loads(failed.stdout)["status"]) == (1, "failed")
    unknown = run(*trimail, "status", "0" * 32, url=service, TRIMAIL_API_KEY="alpha")
    assert (unknown.returncode, json.loads(unknown.stdout)["error"]["code"]) == (1, "not_found")
    missing = run(*trimail, "send", "--to", "a@example.com", "--subject", "s", "--text", "t",
                  "--attach", str(tmp_path / "nope.pdf"), url=service)  # fmt: skip
    assert missing.returncode == 2
    assert json.loads(missing.stdout)["error"]["code"] == "usage"
    assert "nope.pdf" in json.loads(missing.stdout)["error"]["message"]
    assert "Traceback" not in missing.stderr
    version = run(*trimail, "--version", url=service)
    assert version.stdout.startswith("trimail ")


def test_send_sh_exits_non_zero_on_an_error(service: str) -> None:
    refused = run("bash", "examples/send.sh", "not-an-address", url=service,
                  TRIMAIL_API_KEY="alpha")  # fmt: skip
    assert refused.returncode != 0
    assert "validation_error" in refused.stdout
    assert "HTTP 422" in refused.stdout


async def test_wait_polls_until_final_with_backoff(
    service: str, smtp_server: SMTPTestServer
) -> None:
    """Client.wait and AsyncClient.wait return the final status; a short timeout raises."""
    smtp_server.hold()
    async with AsyncClient(service, "alpha") as client:
        job = await client.send(MAIL)
        with pytest.raises(TimeoutError, match="still"):
            await client.wait(job.id, timeout=0.3)
        smtp_server.release()
        assert (await client.wait(job.id, timeout=30)).status == "sent"
    with Client(service, "alpha") as blocking:
        assert blocking.wait(job.id, timeout=30).status == "sent"


def test_tool_definition_describes_the_request() -> None:
    """trimail tool prints send_email's schema: valid requests pass, an agent's slip fails."""
    printed = run(sys.executable, "-m", "trimail", "tool", url="")
    tools = {tool["function"]["name"]: tool["function"] for tool in json.loads(printed.stdout)}
    schema = tools["send_email"]["parameters"]
    assert "$ref" not in json.dumps(schema)
    jsonschema.Draft202012Validator(schema).validate(MAIL)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate({**MAIL, "body": "x"})
    anthropic = run(sys.executable, "-m", "trimail", "tool", "--format", "anthropic", url="")
    assert json.loads(anthropic.stdout)[0]["input_schema"] == schema


def test_examples_run_against_dev_mode(services: list[Service], tmp_path: Path) -> None:
    """Every example runs to success against trimail serve --dev; each mail lands in the outbox."""
    outbox = tmp_path / "outbox"
    url = start(services, tmp_path, "--dev", "--outbox", str(outbox), "--port", "0").wait_ready()
    python = sys.executable
    for command in (
        [python, "examples/agent_loop.py"],
        [
            python,
            "examples/agent_send.py",
            "--to",
            "a@example.com",
            "--subject",
            "s",
            "--text",
            "t",
        ],
        [python, "examples/concurrent_send.py", "-n", "10", "-c", "4"],
        ["bash", "examples/send.sh", "b@example.com"],
    ):
        done = run(*command, url=url)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
    wait_for(lambda: len(list(outbox.glob("*.eml"))) == 13)


def test_the_readme_send_command_works_against_dev_mode(
    services: list[Service], tmp_path: Path
) -> None:
    """In dev mode the README's ``trimail send`` works as written (the dev sender), a
    ``localhost`` recipient is accepted, and provider settings are reported as ignored."""
    outbox = tmp_path / "outbox"
    service = start(services, tmp_path, "--dev", "--outbox", str(outbox), "--port", "0",
                    env={"TRIMAIL_SMTP_HOST": "smtp.example.com"})  # fmt: skip
    url = service.wait_ready()
    assert "TRIMAIL_SMTP_HOST is ignored" in service.log()
    trimail = [sys.executable, "-m", "trimail", "send"]
    for recipient in ("you@example.com", "me@localhost"):
        done = run(*trimail, "--to", recipient, "--subject", "Hello", "--text", "It works.",
                   url=url)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    wait_for(lambda: len(list(outbox.glob("*.eml"))) == 2)
    mails = [path.read_text() for path in outbox.glob("*.eml")]
    assert all('From: "trimail (dev)" <trimail@localhost>' in mail for mail in mails)
    assert any("To: me@localhost" in mail for mail in mails)


def test_outside_dev_mode_a_one_label_domain_is_refused(service: str) -> None:
    answer = httpx.post(f"{service}/email/send", json={**MAIL, "to": "me@localhost"},
                        headers={"Authorization": "Bearer alpha"}, timeout=10)  # fmt: skip
    assert answer.status_code == 422
    assert answer.json()["error"]["details"][0]["field"] == "to[0]"
