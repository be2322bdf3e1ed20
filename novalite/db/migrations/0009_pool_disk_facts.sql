-- 0007: a host's free disk as its instance storage pool reports it (#17), for os-hypervisors'
-- disk_available_least; NULL where the disk is configured (disk_gb, simulated hosts). Idempotent.
ALTER TABLE compute_nodes ADD COLUMN IF NOT EXISTS disk_available_least integer;
