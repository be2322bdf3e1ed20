-- 0004: what a compute host reports of itself through libvirt (#17), for os-hypervisors: its
-- address, its CPU as its capabilities describe it, and when it booted. Idempotent.
ALTER TABLE compute_nodes ADD COLUMN IF NOT EXISTS host_ip text;
ALTER TABLE compute_nodes ADD COLUMN IF NOT EXISTS cpu_vendor text;
ALTER TABLE compute_nodes ADD COLUMN IF NOT EXISTS cpu_features text[] NOT NULL DEFAULT '{}';
ALTER TABLE compute_nodes ADD COLUMN IF NOT EXISTS cpu_topology jsonb NOT NULL DEFAULT '{}';
ALTER TABLE compute_nodes ADD COLUMN IF NOT EXISTS booted_at timestamptz;
