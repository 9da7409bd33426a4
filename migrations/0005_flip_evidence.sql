-- What the scheduler learns flip ages from: the last check that saw a payment still
-- pending (the flip came after it, and no later than the check that saw it final).
ALTER TABLE payments ADD COLUMN pending_seen_at INTEGER;
-- Rebuilding the learnt distribution at start reads the payments started recently.
CREATE INDEX payments_started ON payments (started_at);
