"""Several processes (here: threads with connections of their own) opening one new
SQLite spool at once all get it: none fails with "database is locked"."""

from __future__ import annotations

import threading
from pathlib import Path

from trimail.store.sqlite import SQLiteDriver

ROUNDS, OPENERS = 30, 8


def test_a_new_spool_opened_by_many_at_once_opens_for_all(tmp_path: Path) -> None:
    failures: list[BaseException] = []
    for round_ in range(ROUNDS):
        path = tmp_path / f"spool-{round_}.db"
        start = threading.Barrier(OPENERS)

        def open_it(path: Path = path, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                SQLiteDriver(path).close()
            except BaseException as exc:  # collected for the assertion
                failures.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(OPENERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
