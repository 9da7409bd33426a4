-- Replay starts a fresh retry schedule without forgetting earlier attempts: `attempts`
-- keeps counting every attempt ever made, and the schedule's position is
-- `attempts - retry_from` (the number of attempts made when the schedule last began).
ALTER TABLE webhook_events ADD COLUMN retry_from INTEGER NOT NULL DEFAULT 0;
