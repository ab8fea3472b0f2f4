"""A throwaway PostgreSQL cluster for tests: initdb in a temporary directory, loopback only.

The machine's PostgreSQL 15 server binaries are used (Debian's ``postgresql``
package; ``.ci/run`` installs it). ``initdb`` refuses to run as root, so as
root the cluster runs as the ``postgres`` user. It listens on 127.0.0.1 at a
free port and is stopped (``pg_ctl stop -m immediate``) by PID file at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

CANDIDATE_DIRS = [Path("/usr/lib/postgresql/15/bin"), Path("/usr/lib/postgresql/16/bin")]


def find_binaries() -> Path | None:
    """The directory holding initdb and pg_ctl, or None if PostgreSQL is not installed."""
    for directory in CANDIDATE_DIRS:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One cluster; :meth:`database` creates a fresh database and returns its URL."""

    def __init__(self, binaries: Path, durable: bool = False) -> None:
        """``durable``: fsync and synchronous commits on, as in production (benchmarks);
        off by default, which tests trade for speed."""
        self.binaries = binaries
        self.durable = durable
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="trimail-pg-"))
        self.data = self.root / "data"
        self._as_root = os.geteuid() == 0
        self._count = 0
        if self._as_root:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync")  # fmt: skip
        self.resume()

    def resume(self) -> None:
        """Start the server (again), on the same port and data."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
        options += "-c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-w", "-t", "60",
                  "-l", str(self.root / "server.log"), "start")  # fmt: skip

    def pause(self) -> None:
        """Stop the server, keeping its data: the store becomes unreachable.

        A fast (clean) stop: with fsync and synchronous_commit off, an immediate one
        could lose the last commits, which this cluster trades for speed.
        """
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.binaries / program), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        self._count += 1
        name = f"trimail_test_{self._count}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
