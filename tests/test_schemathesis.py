"""Schemathesis (a tool nobody here wrote) against ``trimail serve`` over real HTTP:
every check, every phase (examples, coverage, fuzzing, stateful), bounded examples.

One check is left out, ``positive_data_acceptance``: it expects every request that
fits the JSON Schema to be accepted, and JSON Schema cannot say what an email address
is (RFC 5322 and IDNA rules, special-use domains), so a schema-valid "to" such as
"0" is rightly refused with 422.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .serving import Service, start

SCHEMATHESIS = [sys.executable, "-m", "schemathesis.cli"]
KEY = "schemathesis-key"
#: Examples per operation and phase: enough to find what the schema allows and the
#: server refuses, few enough to finish within a minute on the CI machine.
MAX_EXAMPLES = 30


def test_schemathesis_finds_no_failure(services: list[Service], tmp_path: Path) -> None:
    pytest.importorskip("schemathesis", reason="schemathesis is in the test extras")
    url = start(services, tmp_path, "--dev", "--outbox", str(tmp_path / "o"), "--port", "0",
                "--smtp-check", "false", "--api-keys", KEY).wait_ready()  # fmt: skip
    done = subprocess.run(
        [*SCHEMATHESIS, "run", f"{url}/openapi.json", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance", "-H", f"Authorization: Bearer {KEY}",
         "--max-examples", str(MAX_EXAMPLES), "--seed", "20261128", "--workers", "1"],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Stateful" in done.stdout
