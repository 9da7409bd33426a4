-- Retention (database.keep_finished, webhooks.keep_delivered) deletes the oldest finished
-- payments and delivered events in small batches: these let each batch find them without a
-- scan of the table.
CREATE INDEX payments_finished ON payments (finished_at) WHERE state != 'pending';
CREATE INDEX webhook_events_delivered ON webhook_events (delivered_at) WHERE state = 'delivered';
