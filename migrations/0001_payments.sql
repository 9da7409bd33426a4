-- Payments under watch. Times are unix milliseconds (UTC).
CREATE TABLE payments (
    pk               INTEGER PRIMARY KEY,
    kind             TEXT    NOT NULL,
    id               TEXT    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'succeeded', 'failed', 'expired', 'refunded', 'timed_out', 'cancelled')),
    upstream_status  TEXT,
    started_at       INTEGER NOT NULL,
    -- The first check's offset from started_at, drawn once so that a restart keeps the plan.
    jitter_ms        INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    -- Planned time of the next check; NULL once final.
    next_check_at    INTEGER,
    checks_done      INTEGER NOT NULL DEFAULT 0,
    last_checked_at  INTEGER,
    last_error       TEXT,
    finished_at      INTEGER,
    response         TEXT,
    metadata         TEXT,
    callback_url     TEXT,
    -- Number of webhook events produced so far (the last event's sequence).
    event_seq        INTEGER NOT NULL DEFAULT 0,
    UNIQUE (kind, id)
);

CREATE INDEX payments_pending ON payments (next_check_at) WHERE state = 'pending';
CREATE INDEX payments_state_pk ON payments (state, pk);

-- Every observed change of upstream status or state, oldest first.
CREATE TABLE status_history (
    pk                       INTEGER PRIMARY KEY,
    payment_pk               INTEGER NOT NULL REFERENCES payments (pk),
    at                       INTEGER NOT NULL,
    previous_state           TEXT    NOT NULL,
    state                    TEXT    NOT NULL,
    previous_upstream_status TEXT,
    upstream_status          TEXT
);
CREATE INDEX status_history_payment ON status_history (payment_pk, pk);

-- The request budget's ledger: every upstream request, written before it is sent, so a
-- restart knows what was spent in the current window.
CREATE TABLE upstream_requests (
    pk       INTEGER PRIMARY KEY,
    pool     TEXT    NOT NULL,
    sent_at  INTEGER NOT NULL,
    done_at  INTEGER
);
CREATE INDEX upstream_requests_sent ON upstream_requests (sent_at);

-- Webhook outbox: written in the same transaction as the status change that causes it.
CREATE TABLE webhook_events (
    pk               INTEGER PRIMARY KEY,
    event_id         TEXT    NOT NULL UNIQUE,
    payment_pk       INTEGER NOT NULL REFERENCES payments (pk),
    sequence         INTEGER NOT NULL,
    type             TEXT    NOT NULL,
    url              TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    delivered_at     INTEGER,
    last_error       TEXT,
    UNIQUE (payment_pk, sequence)
);
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_events_state ON webhook_events (state, pk);

CREATE TABLE webhook_attempts (
    pk           INTEGER PRIMARY KEY,
    event_pk     INTEGER NOT NULL REFERENCES webhook_events (pk),
    at           INTEGER NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    latency_ms   INTEGER NOT NULL
);
CREATE INDEX webhook_attempts_event ON webhook_attempts (event_pk);

-- The stable read interface for merchant apps (SPEC section 5).
CREATE VIEW payment_states AS
SELECT kind, id, state, upstream_status,
       CASE WHEN state = 'pending' THEN 0 ELSE 1 END AS final,
       started_at, last_checked_at, finished_at, checks_done, last_error,
       response, metadata, next_check_at
FROM payments;
