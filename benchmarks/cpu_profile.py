"""Where a server's CPU goes: py-spy samples of its threads, by area.

``record(pid, seconds, path)`` samples every thread of ``pid`` with ``py-spy
record --threads``. py-spy cannot always tell a thread waiting in a system
call from one that runs, so ``summarize`` drops the samples whose innermost
frame is a known wait (``IDLE``: the event loop in epoll, a thread in recv or
sendall, an idle pool thread) and sorts the rest into the first area whose
pattern its stack matches, from the innermost frame out, so a sample inside
smtplib called from trimail counts as smtplib. Run as a script it summarizes
saved raw files::

    python benchmarks/cpu_profile.py run.raw [more.raw ...]
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

#: (area, pattern on a frame "function (file:line)"), tried from the innermost frame out.
AREAS = [
    ("logging", r"[(/]logging/|trimail/logs\.py"),
    ("MIME building (email package)", r"[(/]email/"),
    ("message (trimail)", r"trimail/delivery/(message|compose)\.py"),
    ("smtplib and sockets in threads", r"smtplib\.py|/ssl\.py|python3\.\d+/socket\.py"),
    ("store: SQL driver", r"sqlite3|[(/]psycopg"),
    ("store (trimail)", r"trimail/store/"),
    (
        "validation (pydantic, email-validator)",
        r"[(/]pydantic|email_validator|trimail/(models|mailbox)\.py",
    ),
    ("JSON", r"[(/]json/"),
    ("HTTP: h11", r"[(/]h11/"),
    ("HTTP: Hypercorn", r"[(/]hypercorn/"),
    ("HTTP: Quart, Werkzeug", r"[(/](quart|quart_trio|werkzeug|blinker)/"),
    ("trimail HTTP (gate, routes)", r"trimail/http/"),
    ("thread handoff (to_thread)", r"trio/_threads\.py|_thread_cache\.py"),
    ("socket system calls (event loop)", r"_nonblocking_helper|_sock_method_wrapper"),
    ("trio scheduler and I/O", r"[(/]trio/|[(/]outcome/"),
    ("trimail delivery", r"trimail/delivery/"),
    ("trimail other", r"trimail/"),
]
_COMPILED = [(area, re.compile(pattern)) for area, pattern in AREAS]
#: Innermost frames that are waits, not work.
IDLE = re.compile(
    r"EpollIOManager\.get_events|SocketIO\.readinto|SMTP\.send \(smtplib|"
    r"WorkerThread\._work|Condition\.wait|QueueListener\.dequeue|Thread\.join|"
    r"Event\.wait|sleep \(|select \(|_recv_bytes|Connection\.wait|notifies"
)


def record(
    pid: int, seconds: float, path: Path, rate: int = 100, gil: bool = False
) -> subprocess.Popen[bytes]:
    """Start py-spy on ``pid`` for ``seconds``; wait on the returned process.

    ``gil``: only samples of the thread holding the GIL (py-spy ``--gil``), which
    says who competes for the one core Python code can use.
    """
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [py_spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(rate),
               "--threads", "-f", "raw", "-o", str(path), *(["--gil"] if gil else [])]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(path: Path) -> Counter[str]:
    """Samples per area in the raw (collapsed stacks) file at ``path``."""
    areas: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[1:]  # the first is the thread
        if frames and not IDLE.search(frames[-1]):
            areas[_area(frames)] += int(count)
    return areas


def _area(frames: list[str]) -> str:
    for frame in reversed(frames):
        for area, pattern in _COMPILED:
            if pattern.search(frame):
                return area
    return "other"


def table(areas: Counter[str]) -> list[tuple[str, float]]:
    """(area, share of all samples) from the largest share down."""
    total = sum(areas.values()) or 1
    return [(area, count / total) for area, count in areas.most_common()]


def main(paths: list[str]) -> int:
    for path in paths:
        areas = summarize(Path(path))
        print(f"{path}: {sum(areas.values())} samples")
        for area, share in table(areas):
            print(f"  {100 * share:5.1f} %  {area}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
