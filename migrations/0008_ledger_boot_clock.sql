-- The budget ledger's rows dated by the boot clock too (boot id, ms since boot): a restart
-- within the same boot knows each request's age whatever the wall clock did.
ALTER TABLE upstream_requests ADD COLUMN boot_id TEXT;
ALTER TABLE upstream_requests ADD COLUMN boot_ms INTEGER;
