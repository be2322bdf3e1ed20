-- 0007: live migrations (#17). Nova's migration records carry the progress of a live migration
-- (memory and disk bytes: total, processed, remaining), which GET /servers/{id}/migrations
-- shows while it runs; filled from libvirt's job info. Idempotent.
ALTER TABLE migrations ADD COLUMN IF NOT EXISTS memory_total bigint;
ALTER TABLE migrations ADD COLUMN IF NOT EXISTS memory_processed bigint;
ALTER TABLE migrations ADD COLUMN IF NOT EXISTS memory_remaining bigint;
ALTER TABLE migrations ADD COLUMN IF NOT EXISTS disk_total bigint;
ALTER TABLE migrations ADD COLUMN IF NOT EXISTS disk_processed bigint;
ALTER TABLE migrations ADD COLUMN IF NOT EXISTS disk_remaining bigint;
