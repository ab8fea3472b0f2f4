"""The SQL of the durable stores: their tables, and every statement they run.

Written once for SQLite and PostgreSQL, with named ``:parameters``, ``{blob}``
for the binary column type and ``{skip_locked}`` where PostgreSQL claims rows
that no other transaction holds (each driver fills these in). All times are
Unix seconds, as ``double precision``.
"""

from __future__ import annotations

SCHEMA_VERSION = 1
#: Ids asked about per statement in :meth:`SQLStore.unfinished`.
CHUNK = 500
#: Rows deleted per statement when pruning, so that no transaction grows large.
PRUNE_BATCH = 5000

OPEN = "('queued', 'sending', 'retrying')"
SCHEMA = """
CREATE TABLE IF NOT EXISTS trimail_jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    next_attempt_at DOUBLE PRECISION,
    lease_until DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    size BIGINT NOT NULL,
    payload {blob},
    pending TEXT NOT NULL,
    delivered TEXT NOT NULL,
    refused TEXT NOT NULL,
    last_error TEXT,
    last_error_code INTEGER
);
CREATE INDEX IF NOT EXISTS trimail_jobs_due ON trimail_jobs (next_attempt_at)
    WHERE state IN ('queued', 'retrying');
CREATE INDEX IF NOT EXISTS trimail_jobs_leased ON trimail_jobs (lease_until)
    WHERE state = 'sending';
CREATE INDEX IF NOT EXISTS trimail_jobs_finished ON trimail_jobs (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS trimail_idempotency (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint {blob} NOT NULL,
    answer TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX IF NOT EXISTS trimail_idempotency_age ON trimail_idempotency (created_at);
CREATE TABLE IF NOT EXISTS trimail_totals (
    id INTEGER PRIMARY KEY,
    jobs BIGINT NOT NULL,
    bytes BIGINT NOT NULL
);
INSERT INTO trimail_totals (id, jobs, bytes) VALUES (1, 0, 0) ON CONFLICT DO NOTHING
"""
CLAIM = """
UPDATE trimail_jobs
SET state = 'sending', attempts = attempts + 1, lease_until = :lease_until, updated_at = :now
WHERE id IN (
    SELECT id FROM trimail_jobs
    WHERE (state IN ('queued', 'retrying') AND next_attempt_at <= :now)
       OR (state = 'sending' AND lease_until <= :now)
    ORDER BY next_attempt_at LIMIT :limit {skip_locked}
)
RETURNING id, owner, attempts, created_at, payload, pending, delivered, refused
"""
INSERT_JOB = """
INSERT INTO trimail_jobs (id, owner, state, attempts, created_at, updated_at, next_attempt_at,
                          size, payload, pending, delivered, refused)
VALUES (:id, :owner, 'queued', 0, :created_at, :created_at, :created_at,
        :size, :payload, :pending, '[]', '{}')
"""
FINISH = """
UPDATE trimail_jobs
SET state = :state, updated_at = :at, finished_at = :at, next_attempt_at = NULL,
    lease_until = NULL, payload = NULL, pending = '[]', delivered = :delivered,
    refused = :refused, last_error = :last_error, last_error_code = :last_error_code
WHERE id = :id AND attempts = :attempt AND state = 'sending'
RETURNING size
"""
RETRY = """
UPDATE trimail_jobs
SET state = 'retrying', updated_at = :at, next_attempt_at = :next_attempt_at,
    lease_until = NULL, pending = :pending, delivered = :delivered, refused = :refused,
    last_error = :last_error, last_error_code = :last_error_code
WHERE id = :id AND attempts = :attempt AND state = 'sending'
"""
RELEASE = """
UPDATE trimail_jobs
SET state = CASE WHEN attempts > 1 THEN 'retrying' ELSE 'queued' END,
    attempts = attempts - 1, lease_until = NULL, updated_at = :now
WHERE id = :id AND attempts = :attempt AND state = 'sending'
"""
STATUS = """
SELECT id, owner, state, attempts, created_at, updated_at, last_error_code, last_error,
       refused, finished_at
FROM trimail_jobs WHERE id = :id
"""

STATEMENTS = {
    "claim": CLAIM,
    "insert_job": INSERT_JOB,
    "finish": FINISH,
    "retry": RETRY,
    "release": RELEASE,
    "status": STATUS,
    "set_totals": "UPDATE trimail_totals SET jobs = :jobs, bytes = :bytes WHERE id = 1",
    "free_totals": "UPDATE trimail_totals SET jobs = jobs - :jobs, bytes = bytes - :bytes "
    "WHERE id = 1",
    "get_key": "SELECT fingerprint, answer, created_at FROM trimail_idempotency "
    "WHERE owner = :owner AND key = :key",
    "drop_key": "DELETE FROM trimail_idempotency WHERE owner = :owner AND key = :key",
    "insert_key": "INSERT INTO trimail_idempotency (owner, key, fingerprint, answer, created_at) "
    "VALUES (:owner, :key, :fingerprint, :answer, :now)",
    "next_due": "SELECT min(next_attempt_at) FROM trimail_jobs "
    "WHERE state IN ('queued', 'retrying')",
    "count_open": "SELECT state, count(*) FROM trimail_jobs "
    "WHERE state IN ('queued', 'sending', 'retrying') GROUP BY state",
    "prune_jobs": "DELETE FROM trimail_jobs WHERE id IN (SELECT id FROM trimail_jobs "
    "WHERE finished_at IS NOT NULL AND finished_at <= :cutoff LIMIT :batch) RETURNING id",
    "prune_keys": "DELETE FROM trimail_idempotency WHERE (owner, key) IN (SELECT owner, key "
    "FROM trimail_idempotency WHERE created_at <= :cutoff LIMIT :batch) RETURNING key",
    "trim_jobs": "DELETE FROM trimail_jobs WHERE id IN (SELECT id FROM trimail_jobs "
    "WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT :batch OFFSET :keep) "
    "RETURNING id",
    "trim_keys": "DELETE FROM trimail_idempotency WHERE (owner, key) IN (SELECT owner, key "
    "FROM trimail_idempotency ORDER BY created_at DESC LIMIT :batch OFFSET :keep) "
    "RETURNING key",
}
