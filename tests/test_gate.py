"""What is decided before a body is read: who may send, how big, how much at once.

In-process tests go through the real app and its gate; the others run
``trimail serve`` (or plain Hypercorn) as a process and speak HTTP over a
socket, so that the order of bytes on the wire is the test's to choose.
"""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from trimail.http.app import TrimailApp, create_app

from .conftest import open_jobs, settings_for
from .rawhttp import address, closes, read_response, request_head
from .serving import MAIL, Service, final_outcomes, start, start_command, wait_for
from .smtpserver import SMTPTestServer

KEYS = "alpha-key,beta-key"
MiB = 1024 * 1024


@pytest.fixture
async def keyed_app(smtp_server: SMTPTestServer) -> Any:
    app = create_app(
        settings_for(smtp_server, api_keys=KEYS, metrics_key="scrape-key"), setup_logging=False
    )
    async with app.test_app():
        yield app


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("header", ["Forwarded", "X-Forwarded-For", "X-Real-IP", "Via"])
async def test_without_keys_a_request_through_a_proxy_is_refused(
    running_app: TrimailApp, header: str
) -> None:
    """A proxy on the same host connects from loopback for anyone: without keys, 401."""
    response = await running_app.test_client().post(
        "/email/send", json=MAIL, headers={header: "203.0.113.7"}
    )
    assert response.status_code == 401
    body = await response.get_json()
    assert "keys are required behind a proxy" in body["error"]["message"]
    assert open_jobs(running_app) == 0


async def test_metrics_need_a_key_when_keys_are_set(keyed_app: TrimailApp) -> None:
    """/metrics takes an API key or the metrics key; health and readiness stay open."""
    client = keyed_app.test_client()
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers=bearer("wrong"))).status_code == 401
    assert (await client.get("/metrics", headers=bearer("alpha-key"))).status_code == 200
    assert (await client.get("/metrics", headers=bearer("scrape-key"))).status_code == 200
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200


async def test_the_metrics_key_cannot_send(keyed_app: TrimailApp) -> None:
    """The metrics key is for scraping only: sending with it is 401."""
    response = await keyed_app.test_client().post(
        "/email/send", json=MAIL, headers=bearer("scrape-key")
    )
    assert response.status_code == 401
    assert open_jobs(keyed_app) == 0


async def test_a_wrong_method_lists_the_allowed_ones(running_app: TrimailApp) -> None:
    """A 405 says which methods the route has (RFC 9110 section 15.5.6)."""
    response = await running_app.test_client().delete("/email/send")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]


def test_a_bad_key_is_refused_before_the_body_is_read(
    services: list[Service], tmp_path: Path
) -> None:
    """401 with Connection: close answers a 10 MiB announcement of which no byte was sent."""
    service = start(services, tmp_path, "--dev", "--outbox", str(tmp_path / "o"), "--port", "0",
                    "--api-keys", "alpha-key")  # fmt: skip
    server = address(service.wait_ready())
    for authorization in ({}, {"Authorization": "Bearer wrong"}):
        with socket.create_connection(server, timeout=10) as sock:
            sock.sendall(request_head("POST", "/email/send", 10 * MiB, **authorization))
            head, body = read_response(sock)  # before any of the body was sent
            assert head.startswith(b"HTTP/1.1 401")
            assert b"connection: close" in head.lower()
            assert json.loads(body)["error"]["code"] == "unauthorized"
            assert closes(sock)


def test_an_announced_body_over_the_limit_is_413_at_once(
    services: list[Service], tmp_path: Path
) -> None:
    """A Content-Length above TRIMAIL_MAX_REQUEST_BYTES is refused before the body is sent."""
    service = start(services, tmp_path, "--dev", "--outbox", str(tmp_path / "o"), "--port", "0",
                    "--max-request-bytes", "4096")  # fmt: skip
    with socket.create_connection(address(service.wait_ready()), timeout=10) as sock:
        sock.sendall(request_head("POST", "/email/send", 4097))
        head, body = read_response(sock)
        assert head.startswith(b"HTTP/1.1 413")
        assert json.loads(body)["error"]["code"] == "payload_too_large"
        assert closes(sock)


def test_bodies_in_flight_share_one_byte_budget(services: list[Service], tmp_path: Path) -> None:
    """With room for three 1 MiB bodies, a fourth gets 503 server_busy until one finishes."""
    service = start(services, tmp_path, "--dev", "--outbox", str(tmp_path / "o"), "--port", "0",
                    "--max-inflight-bytes", str(3 * MiB + 1000))  # fmt: skip
    server = address(service.wait_ready())
    body = json.dumps({**MAIL, "text": "x" * (MiB - 200)}).encode()
    slow = [socket.create_connection(server, timeout=10) for _ in range(3)]
    try:
        for sock in slow:  # each holds its reservation while its body trickles in
            sock.sendall(request_head("POST", "/email/send", len(body)) + body[:1000])
        with socket.create_connection(server, timeout=10) as refused:
            refused.sendall(request_head("POST", "/email/send", len(body)))
            head, answer = read_response(refused)
            assert head.startswith(b"HTTP/1.1 503")
            assert b"retry-after: 1" in head.lower()
            assert json.loads(answer)["error"]["code"] == "server_busy"
        slow[0].sendall(body[1000:])  # one finishes...
        assert read_response(slow[0])[0].startswith(b"HTTP/1.1 202")
        with socket.create_connection(server, timeout=10) as admitted:  # ...and frees its room
            admitted.sendall(request_head("POST", "/email/send", len(body)) + body)
            assert read_response(admitted)[0].startswith(b"HTTP/1.1 202")
    finally:
        for sock in slow:
            sock.close()


def test_unix_socket_without_keys_refuses_to_start(services: list[Service], tmp_path: Path) -> None:
    """trimail serve on a Unix socket needs API keys: exit 2 with the reason."""
    service = start(services, tmp_path, "--host", f"unix:{tmp_path / 'trimail.sock'}")
    assert service.wait() == 2
    assert "Unix socket" in service.log()
    assert "TRIMAIL_API_KEYS" in service.log()


def test_unix_socket_with_keys_serves_key_holders(
    services: list[Service], tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    """With keys, trimail serve listens on the socket and authenticates every request."""
    path = tmp_path / "trimail.sock"
    service = start(services, tmp_path, "--host", f"unix:{path}", "--api-keys", "alpha-key",
                    "--smtp-host", "127.0.0.1", "--smtp-port", str(smtp_server.port),
                    "--smtp-security", "none")  # fmt: skip
    wait_for(lambda: "Running on" in service.log())
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=10) as client:
        assert client.post("http://trimail/email/send", json=MAIL).status_code == 401
        sent = client.post("http://trimail/email/send", json=MAIL, headers=bearer("alpha-key"))
        assert sent.status_code == 202
    wait_for(lambda: len(smtp_server.received) == 1)
    service.signal(signal.SIGTERM)
    assert service.wait() == 0


def test_plain_hypercorn_on_a_unix_socket_without_keys_sends_nothing(
    services: list[Service], tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    """Hypercorn can bind a Unix socket trimail cannot refuse; every send there is 401."""
    path = tmp_path / "trimail.sock"
    env = {"TRIMAIL_SMTP_HOST": "127.0.0.1", "TRIMAIL_SMTP_PORT": str(smtp_server.port),
           "TRIMAIL_SMTP_SECURITY": "none"}  # fmt: skip
    command = ["-m", "hypercorn", "--worker-class", "trio", "--bind", f"unix:{path}"]
    service = start_command(services, tmp_path, [*command, "trimail.http:create_app()"], env=env)
    wait_for(lambda: "Running on" in service.log())
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=10) as client:
        refused = client.post("http://trimail/email/send", json=MAIL)
        assert refused.status_code == 401
        assert "Unix socket" in refused.json()["error"]["message"]
        assert client.get("http://trimail/healthz").status_code == 200
    service.signal(signal.SIGTERM)
    assert service.wait() == 0
    assert final_outcomes(service.log()) == {}
    assert smtp_server.received == []
