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
