-- Accounts: a payment belongs to one Ninjapay account, and its identity is account + kind +
-- id (the same id in two accounts is two payments). Existing rows are the account default.
-- SQLite cannot change a table's UNIQUE constraint in place, so the table is rebuilt
-- (https://www.sqlite.org/lang_altertable.html#otheralter); the store runs migrations with
-- foreign keys off and checks them afterwards, as that procedure asks.
CREATE TABLE payments_new (
    pk               INTEGER PRIMARY KEY,
    account          TEXT    NOT NULL DEFAULT 'default',
    kind             TEXT    NOT NULL,
    id               TEXT    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'succeeded', 'failed', 'expired', 'refunded', 'timed_out', 'cancelled')),
    upstream_status  TEXT,
    started_at       INTEGER NOT NULL,
    jitter_ms        INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    next_check_at    INTEGER,
    checks_done      INTEGER NOT NULL DEFAULT 0,
    last_checked_at  INTEGER,
    last_error       TEXT,
    finished_at      INTEGER,
    response         TEXT,
    metadata         TEXT,
    callback_url     TEXT,
    event_seq        INTEGER NOT NULL DEFAULT 0,
    pending_seen_at  INTEGER,
    ended_state      TEXT,
    watch_seen_at    INTEGER,
    moved_at         INTEGER,
    UNIQUE (account, kind, id)
);

INSERT INTO payments_new (pk, account, kind, id, state, upstream_status, started_at, jitter_ms,
    created_at, updated_at, next_check_at, checks_done, last_checked_at, last_error,
    finished_at, response, metadata, callback_url, event_seq, pending_seen_at, ended_state,
    watch_seen_at, moved_at)
SELECT pk, 'default', kind, id, state, upstream_status, started_at, jitter_ms,
    created_at, updated_at, next_check_at, checks_done, last_checked_at, last_error,
    finished_at, response, metadata, callback_url, event_seq, pending_seen_at, ended_state,
    watch_seen_at, moved_at
FROM payments;

DROP VIEW payment_states;
DROP TABLE payments;
ALTER TABLE payments_new RENAME TO payments;

CREATE INDEX payments_pending ON payments (next_check_at) WHERE state = 'pending';
CREATE INDEX payments_state_pk ON payments (state, pk);
CREATE INDEX payments_started ON payments (started_at);
CREATE INDEX payments_finished ON payments (finished_at) WHERE state != 'pending';
CREATE INDEX payments_watched ON payments (next_check_at)
    WHERE state != 'pending' AND next_check_at IS NOT NULL;

CREATE VIEW payment_states AS
SELECT account, kind, id, state, upstream_status,
       CASE WHEN state = 'pending' THEN 0 ELSE 1 END AS final,
       started_at, last_checked_at, finished_at, checks_done, last_error,
       response, metadata, next_check_at,
       CASE WHEN next_check_at IS NULL AND state != 'pending' THEN 1 ELSE 0 END AS settled
FROM payments;
