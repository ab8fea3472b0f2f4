"""Running trimail (or another server) as a separate process for end-to-end tests.

Each server starts on port 0; its address is read from its log. Processes are
stopped by PID (with the process group each one leads), and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MAIL = {"from": "svc@example.com", "to": "user@example.com", "subject": "Hi", "text": "Hello"}
STARTUP_SECONDS = 60  # a loaded CI machine runs several test sessions at once


class Service:
    """A server process with its output in a file; TRIMAIL_* comes from ``env`` only."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TRIMAIL_")}
        clean.update(env or {})
        self.log_path = log
        self._log = log.open("wb")
        # A session of its own: stop() ends the whole process group, so worker processes
        # (hypercorn --workers N) cannot outlive the test when their supervisor exits first.
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=self._log, env=clean, start_new_session=True
        )
        self.url = ""

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self) -> str:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            found = re.search(r"Running on (http://[\d.:]+)", self.log())
            if found:
                self.url = found.group(1)
                return self.url
            if self.process.poll() is not None:
                raise AssertionError(f"trimail exited early:\n{self.log()}")
            time.sleep(0.02)
        raise AssertionError(f"trimail did not start:\n{self.log()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def stop(self) -> None:
        """Kill the process and every process it started (its process group, by its PID)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self._log.close()


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.stop()


def start(services: list[Service], tmp_path: Path, *args: str, **kwargs: Any) -> Service:
    """Start ``trimail serve ARGS``."""
    return start_command(services, tmp_path, ["-m", "trimail", "serve", *args], **kwargs)


def start_command(
    services: list[Service], tmp_path: Path, args: list[str], **kwargs: Any
) -> Service:
    service = Service([sys.executable, *args], tmp_path / f"server-{len(services)}.log", **kwargs)
    services.append(service)
    return service


def wait_for(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def final_outcomes(log: str) -> dict[str, list[str]]:
    outcomes: dict[str, list[str]] = {}
    for job_id, outcome in re.findall(r"job ([0-9a-f]{32}) (sent|failed|not delivered)", log):
        outcomes.setdefault(job_id, []).append(outcome)
    return outcomes
