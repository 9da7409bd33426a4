-- Reconciliation: a payment that timed out (or ended in a state its kind says may still
-- move, e.g. a quote's success that can be refunded) stays watched on a sparse schedule of
-- ages. While it is, `next_check_at` holds its next planned check although its state is
-- final; NULL means nothing more is planned (settled).
--
-- How the ladder ended it, kept apart from `state`, which a late move changes: the
-- learnt flip ages of live payments are read from these, never from the later moves.
ALTER TABLE payments ADD COLUMN ended_state TEXT;
-- The last check under watch that saw no move, and the check that saw the first move:
-- the interval-censored evidence of when late moves happen.
ALTER TABLE payments ADD COLUMN watch_seen_at INTEGER;
ALTER TABLE payments ADD COLUMN moved_at INTEGER;
UPDATE payments SET ended_state = state WHERE state != 'pending';

-- The scheduler resumes the watched payments at start-up.
CREATE INDEX payments_watched ON payments (next_check_at)
    WHERE state != 'pending' AND next_check_at IS NOT NULL;

-- The read interface gains `settled`: 0 while any check is still planned, 1 when none is.
-- `final` keeps its meaning (the state is not pending).
DROP VIEW payment_states;
CREATE VIEW payment_states AS
SELECT kind, id, state, upstream_status,
       CASE WHEN state = 'pending' THEN 0 ELSE 1 END AS final,
       started_at, last_checked_at, finished_at, checks_done, last_error,
       response, metadata, next_check_at,
       CASE WHEN next_check_at IS NULL AND state != 'pending' THEN 1 ELSE 0 END AS settled
FROM payments;
