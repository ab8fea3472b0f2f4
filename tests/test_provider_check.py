"""The provider check: ``trimail check``, the check at start, and /readyz that follows
the provider. Real SMTP servers (aiosmtpd) throughout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from trimail.http.app import create_app

from .conftest import settings_for, wait_until
from .serving import MAIL
from .smtpserver import SMTPTestServer
from .test_tls import (
    HOST,
    PASSWORD,
    USER,
    WRONG_PASSWORD,
    Accounts,
    TLSServer,
    ca,
    ca_file,
    serve,
    server_context,
    starttls_server,
)

__all__ = ["ca", "ca_file", "serve"]  # fixtures shared with test_tls


def check(port: int, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIMAIL_")}
    env.update({"TRIMAIL_SMTP_HOST": HOST, "TRIMAIL_SMTP_PORT": str(port), **settings})
    return subprocess.run([sys.executable, "-m", "trimail", "check"], capture_output=True,
                          text=True, env=env, timeout=60, check=False)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def test_check_passes_against_a_plain_server(smtp_server: SMTPTestServer) -> None:
    done = check(smtp_server.port, TRIMAIL_SMTP_SECURITY="none")
    assert (done.returncode, done.stdout.strip()) == (
        0, f"ok: {HOST}:{smtp_server.port} answered NOOP over a connection in clear text, "
        "without AUTH",
    )  # fmt: skip
    assert smtp_server.received == []


def test_check_names_a_refused_connection() -> None:
    port = free_port()
    done = check(port, TRIMAIL_SMTP_SECURITY="none")
    assert (done.returncode, done.stdout.strip()) == (
        1, f"failed: connection refused by {HOST}:{port}"
    )  # fmt: skip


def test_check_says_what_to_do_when_tls_meets_plain_smtp(smtp_server: SMTPTestServer) -> None:
    done = check(smtp_server.port, TRIMAIL_SMTP_SECURITY="tls")
    assert done.returncode == 1
    assert done.stdout.startswith(f"failed: TLS handshake with {HOST}:{smtp_server.port} failed")
    assert "starttls or none" in done.stdout


def test_check_logs_in_over_starttls_and_names_a_wrong_password(
    serve: Callable[..., TLSServer], ca: trustme.CA, ca_file: Path
) -> None:
    accounts = Accounts()
    server = starttls_server(serve, server_context(ca, HOST), authenticator=accounts,
                             auth_required=True, auth_require_tls=True)  # fmt: skip
    common = {"TRIMAIL_SMTP_SECURITY": "starttls", "TRIMAIL_SMTP_CA_FILE": str(ca_file),
              "TRIMAIL_SMTP_USERNAME": USER}  # fmt: skip
    good = check(server.port, TRIMAIL_SMTP_PASSWORD=PASSWORD, **common)
    assert (good.returncode, good.stdout.strip()) == (
        0, f"ok: {HOST}:{server.port} answered NOOP over TLS, logged in as {USER!r}"
    )  # fmt: skip
    bad = check(server.port, TRIMAIL_SMTP_PASSWORD=WRONG_PASSWORD, **common)
    assert bad.returncode == 1
    assert bad.stdout.startswith("failed: SMTP authentication failed (535")
    assert WRONG_PASSWORD not in bad.stdout + bad.stderr


async def readiness(app: Any) -> tuple[int, Any]:
    answer = await app.test_client().get("/readyz")
    return answer.status_code, await answer.get_json()


async def test_readyz_follows_the_provider(
    smtp_server: SMTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The check at start fails: /readyz is 503 with the reason, and trimail still serves;
    once a delivery gets through, /readyz is 200 again."""
    smtp_server.limit_connections(0, "421 4.3.2 Service not available")
    settings = settings_for(smtp_server, smtp_check=True, retry_base_delay=0.05,
                            retry_max_delay=0.1)  # fmt: skip
    app = create_app(settings, setup_logging=False)
    async with app.test_app():
        await wait_until(lambda: app.dispatcher.provider.problem is not None)
        status, body = await readiness(app)
        assert (status, body["error"]["code"]) == (503, "provider_unavailable")
        assert "421 4.3.2 Service not available" in body["error"]["message"]
        assert (await app.test_client().post("/email/send", json=MAIL)).status_code == 202
        smtp_server.limit_connections(100)
        await wait_until(lambda: len(smtp_server.received) == 1)
        await wait_until(lambda: app.dispatcher.provider.problem is None)
        assert (await readiness(app))[0] == 200
    messages = [r.getMessage() for r in caplog.records if r.name == "trimail.delivery.provider"]
    assert messages[0].startswith("the SMTP provider cannot be used: 421 4.3.2")
    assert messages[-1] == "the SMTP provider answers again"


async def test_a_passing_check_at_start_is_logged(
    smtp_server: SMTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings_for(smtp_server, smtp_check=True), setup_logging=False)
    async with app.test_app():
        await wait_until(lambda: "provider check passed" in caplog.text)
        assert (await readiness(app))[0] == 200
    assert smtp_server.received == []
