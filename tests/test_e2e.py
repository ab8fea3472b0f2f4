"""``trimail serve`` as a separate process, spoken to over real HTTP.

Each test starts the process on port 0, reads the bound address from its log,
and stops it with a signal by PID; every wait is bounded.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
import trio

from trimail.http.app import EXIT_DELIVERY_FAILED, create_app, store_limits
from trimail.http.server import serve

from .apps import BrokenStore
from .conftest import settings_for
from .rawhttp import address, closes, read_response, request_head
from .serving import MAIL, Service, final_outcomes, start, start_command, wait_for
from .smtpserver import SMTPTestServer


def provider(smtp_server: SMTPTestServer) -> list[str]:
    """Flags that point trimail serve at the test SMTP server, without TLS."""
    return ["--smtp-host", "127.0.0.1", "--smtp-port", str(smtp_server.port),
            "--smtp-security", "none"]  # fmt: skip


def test_serve_accepts_while_provider_stalls_then_drains_on_sigterm(
    services: list[Service], tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    """Real HTTP: 202s while the provider holds a mail; 503 during the drain; exit 0; all sent."""
    service = start(
        services,
        tmp_path,
        "--port",
        "0",
        *provider(smtp_server),
        "--workers",
        "2",
    )
    url = service.wait_ready()
    smtp_server.hold()
    with httpx.Client(base_url=url, timeout=10) as client:
        first = client.post("/email/send", json=MAIL)
        wait_for(lambda: smtp_server.holding)
        second = client.post("/email/send", json=MAIL)
        assert smtp_server.holding
        assert smtp_server.received == []
        assert (first.status_code, second.status_code) == (202, 202)
        ids = {first.json()["id"], second.json()["id"]}

        service.signal(signal.SIGTERM)
        wait_for(lambda: "received SIGTERM: finishing 2 accepted job(s)" in service.log())
        assert "send it again to stop at once" in service.log()
        refused = client.post("/email/send", json=MAIL)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "shutting_down"
        assert "Retry-After" in refused.headers
        assert client.get("/healthz").json()["status"] == "shutting_down"
    smtp_server.release()
    assert service.wait() == 0
    assert final_outcomes(service.log()) == {job_id: ["sent"] for job_id in ids}
    assert len(smtp_server.received) == 2
    last = service.log().strip().splitlines()[-1]
    assert last.endswith("stopped: 2 sent, 0 failed, 0 not delivered, 0 left queued")


def test_grace_expiry_logs_not_delivered_and_exits_zero(
    services: list[Service], tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    """A provider that never answers: after the grace the job is logged not delivered, exit 0."""
    service = start(
        services,
        tmp_path,
        "--port",
        "0",
        *provider(smtp_server),
        "--shutdown-grace",
        "0.5",
    )
    url = service.wait_ready()
    smtp_server.hold("RCPT")
    job_id = httpx.post(f"{url}/email/send", json=MAIL, timeout=10).json()["id"]
    wait_for(lambda: smtp_server.holding)
    service.signal(signal.SIGINT)
    assert service.wait() == 0
    assert final_outcomes(service.log()) == {job_id: ["not delivered"]}
    smtp_server.release()
    assert smtp_server.received == []


def test_kept_alive_connection_survives_early_answers(
    services: list[Service], tmp_path: Path
) -> None:
    """Headers and body sent apart: every answer comes, or the server closes the connection.

    An answer sent before the body arrived (a 404, a 405, a refusal) must not
    leave the next request on the same connection without an answer.
    """
    service = start(services, tmp_path, "--dev", "--outbox", str(tmp_path / "o"), "--port", "0")
    server = address(service.wait_ready())
    body = json.dumps(MAIL).encode()
    routes = [
        ("POST", "/nope"),
        ("PUT", "/email/send"),
        ("POST", "/email/send"),
        ("GET", "/healthz"),
        ("OPTIONS", "/email/send"),
        ("GET", f"/email/{'0' * 32}"),
    ]
    for method, path in routes:
        with socket.create_connection(server, timeout=10) as sock:
            for _ in range(3):
                sock.sendall(request_head(method, path, len(body)))
                time.sleep(0.05)  # the body arrives after the headers, as httpx sends them
                sock.sendall(body)
                try:
                    reply, _ = read_response(sock)  # a stall times out the socket and fails
                except (AssertionError, BrokenPipeError, ConnectionResetError):
                    break  # the server ended the connection: the client reconnects
                assert reply.startswith(b"HTTP/1.1 "), (method, path, reply)
                if b"connection: close" in reply.lower():
                    assert closes(sock)
                    break
    service.signal(signal.SIGTERM)
    assert service.wait() == 0


def test_second_signal_ends_the_grace(
    services: list[Service], tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    """A second SIGTERM during a long drain stops at once; the job is logged not delivered."""
    service = start(
        services,
        tmp_path,
        "--port",
        "0",
        *provider(smtp_server),
        "--shutdown-grace",
        "600",
    )
    url = service.wait_ready()
    smtp_server.hold("RCPT")
    job_id = httpx.post(f"{url}/email/send", json=MAIL, timeout=10).json()["id"]
    wait_for(lambda: smtp_server.holding)
    service.signal(signal.SIGTERM)
    wait_for(lambda: "finishing 1 accepted job(s)" in service.log())
    service.signal(signal.SIGTERM)
    assert service.wait(timeout=60) == 0  # far below the 600 s grace
    assert "stopping now" in service.log()
    assert final_outcomes(service.log()) == {job_id: ["not delivered"]}
    assert "stopped: 0 sent, 0 failed, 1 not delivered, 0 left queued" in service.log()


def test_dev_mode_writes_eml_files(services: list[Service], tmp_path: Path) -> None:
    """--dev delivers through a real local SMTP sink into .eml files; Bcc only in the envelope."""
    outbox = tmp_path / "outbox"
    service = start(services, tmp_path, "--dev", "--outbox", str(outbox), "--port", "0")
    url = service.wait_ready()
    answer = httpx.post(f"{url}/email/send", json={**MAIL, "bcc": "hidden@example.com"}, timeout=10)
    assert answer.status_code == 202
    wait_for(lambda: list(outbox.glob("*.eml")))
    [eml] = outbox.glob("*.eml")
    text = eml.read_text()
    _, _, message = text.partition("X-Envelope-To: ")
    assert "hidden@example.com" in message.splitlines()[0]
    assert "hidden@example.com" not in message.split("\n", 1)[1]
    assert f"Message-ID: <{answer.json()['id']}@example.com>" in text
    service.signal(signal.SIGINT)
    assert service.wait() == 0


def test_idle_service_stops_promptly(services: list[Service], tmp_path: Path) -> None:
    """An idle service exits 0 on SIGTERM without waiting out the grace period."""
    service = start(
        services,
        tmp_path,
        "--dev",
        "--outbox",
        str(tmp_path / "o"),
        "--port",
        "0",
        "--shutdown-grace",
        "600",
    )
    service.wait_ready()
    service.signal(signal.SIGTERM)
    assert service.wait(timeout=60) == 0  # far below the 600 s grace
    assert "stopped" in service.log()


def test_refuses_public_bind_without_keys(services: list[Service], tmp_path: Path) -> None:
    """Binding beyond loopback without API keys is refused with a clear message."""
    service = start(services, tmp_path, "--host", "0.0.0.0", "--port", "0")
    assert service.wait() == 2
    assert "TRIMAIL_API_KEYS" in service.log()


def test_refuses_unknown_setting(services: list[Service], tmp_path: Path) -> None:
    """A misspelt TRIMAIL_ variable stops the service at start."""
    service = start(services, tmp_path, "--port", "0", env={"TRIMAIL_SMTP_HOSTNAME": "x"})
    assert service.wait() == 2
    assert "unknown setting(s) TRIMAIL_SMTP_HOSTNAME" in service.log()


def test_plain_hypercorn_hosts_the_same_app_and_drains(
    services: list[Service], tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    """hypercorn 'trimail.http:create_app()' reads TRIMAIL_* and drains in lifespan shutdown."""
    env = {
        "TRIMAIL_SMTP_HOST": "127.0.0.1",
        "TRIMAIL_SMTP_PORT": str(smtp_server.port),
        "TRIMAIL_SMTP_SECURITY": "none",
    }
    command = ["-m", "hypercorn", "--worker-class", "trio", "--bind", "127.0.0.1:0"]
    service = start_command(services, tmp_path, [*command, "trimail.http:create_app()"], env=env)
    url = service.wait_ready()
    smtp_server.hold()
    job_id = httpx.post(f"{url}/email/send", json=MAIL, timeout=10).json()["id"]
    wait_for(lambda: smtp_server.holding)
    service.signal(signal.SIGTERM)
    wait_for(lambda: "shutting down: 1 job(s) open here" in service.log())
    smtp_server.release()
    assert service.wait() == 0
    assert final_outcomes(service.log()) == {job_id: ["sent"]}


def test_port_in_use_is_a_clear_error(services: list[Service], tmp_path: Path) -> None:
    """A port already taken ends the service with status 1 and a one-line reason."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = start(services, tmp_path, "--port", str(port))
        assert service.wait() == 1
    assert f"cannot listen on 127.0.0.1:{port}" in service.log()
    assert "Traceback" not in service.log()


def test_a_chunked_body_over_the_limit_is_413_and_nothing_is_queued(
    services: list[Service], tmp_path: Path
) -> None:
    """Without a Content-Length the limit is counted as the chunks arrive: 413, closed."""
    service = start(services, tmp_path, "--dev", "--outbox", str(tmp_path / "o"), "--port", "0",
                    "--max-request-bytes", "2048")  # fmt: skip
    url = service.wait_ready()
    chunk = b"x" * 1024
    with socket.create_connection(address(url), timeout=10) as sock:
        sock.sendall(request_head("POST", "/email/send", None, Transfer_Encoding="chunked"))
        for _ in range(3):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        head, body = read_response(sock)
        assert head.startswith(b"HTTP/1.1 413")
        assert json.loads(body)["error"]["code"] == "payload_too_large"
        assert b"connection: close" in head.lower()
        assert closes(sock)
    service.signal(signal.SIGTERM)
    assert service.wait() == 0
    assert " accepted for " not in service.log()  # no job


def test_slow_drip_body_times_out_while_others_are_served(
    services: list[Service], tmp_path: Path
) -> None:
    """A body that never finishes gets 408 after the request timeout; others get 202 meanwhile."""
    service = start(services, tmp_path, "--dev", "--outbox", str(tmp_path / "o"), "--port", "0",
                    "--request-timeout", "1")  # fmt: skip
    url = service.wait_ready()
    body = json.dumps(MAIL).encode()
    with socket.create_connection(address(url), timeout=10) as slow:
        slow.sendall(request_head("POST", "/email/send", len(body)) + body[:10])  # no more
        assert httpx.post(f"{url}/email/send", json=MAIL, timeout=10).status_code == 202
        reply, _ = read_response(slow)
    assert reply.startswith(b"HTTP/1.1 408")
    service.signal(signal.SIGTERM)
    assert service.wait() == 0


async def test_serve_stops_with_an_error_status_when_delivery_stops() -> None:
    """A dispatcher that dies ends trimail serve with status 70 and a line saying why."""
    settings = settings_for(port=0)
    app = create_app(settings, store=BrokenStore(store_limits(settings)), setup_logging=False)
    with trio.fail_after(30):
        status = await serve(settings, app)
    assert status == EXIT_DELIVERY_FAILED


@pytest.mark.parametrize("workers", ["0", "1"])
def test_plain_hypercorn_exits_when_delivery_stops(
    services: list[Service], tmp_path: Path, workers: str
) -> None:
    """Under plain Hypercorn the worker process exits 70, after a critical line saying why.

    With ``--workers 0`` the worker is the process. With worker processes,
    Hypercorn 0.18's supervisor stops too, but exits 0 (its final join of the
    exited workers overwrites their status).
    """
    command = ["-m", "hypercorn", "--worker-class", "trio", "--workers", workers,
               "--bind", "127.0.0.1:0", "tests.apps:crashing_app()"]  # fmt: skip
    service = start_command(services, tmp_path, command)
    status = service.wait()  # it stops by itself
    if workers == "0":
        assert status == EXIT_DELIVERY_FAILED
    assert "delivery stopped after an internal error" in service.log()
    assert "a bug in the store's claim" in service.log()
