-- 0006: the server list on a database that has lived (bench/scale.py: 100,000 instances, most
-- deleted). Every filter GET /servers takes reads an index instead of the whole table, and the
-- default order (created_at DESC, id DESC) is an index order, so a page (and the page after a
-- marker) stops after `limit` rows instead of sorting every match. Idempotent.

-- Newest first across projects (an admin's all_tenants), live or deleted (deleted=true), and
-- within a project (a member's list): the ORDER BY's columns in full, so no sort step.
CREATE INDEX IF NOT EXISTS instances_created ON instances (deleted, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS instances_project_created ON instances (project_id, deleted, created_at DESC, id DESC);
DROP INDEX IF EXISTS instances_project;  -- a prefix of instances_project_created

-- The equality filters on live instances (host has instances_host, reservation_id
-- instances_reservation, changes-since instances_updated already).
CREATE INDEX IF NOT EXISTS instances_vm_state ON instances (vm_state, created_at DESC) WHERE NOT deleted;
CREATE INDEX IF NOT EXISTS instances_node ON instances (node) WHERE NOT deleted;
CREATE INDEX IF NOT EXISTS instances_flavor ON instances ((flavor->>'flavorid')) WHERE NOT deleted;
CREATE INDEX IF NOT EXISTS instances_image ON instances (image_ref) WHERE NOT deleted;
CREATE INDEX IF NOT EXISTS instances_user ON instances (user_id, created_at DESC) WHERE NOT deleted;
CREATE INDEX IF NOT EXISTS instances_zone ON instances (availability_zone) WHERE NOT deleted;
CREATE INDEX IF NOT EXISTS instances_locked ON instances (created_at DESC) WHERE locked AND NOT deleted;
-- tags / tags-any (has all of / one of them); not-tags and not-tags-any are negations, which no
-- index answers: they walk instances_created and stop at the page's end.
CREATE INDEX IF NOT EXISTS instances_tags ON instances USING gin (tags) WHERE NOT deleted;
