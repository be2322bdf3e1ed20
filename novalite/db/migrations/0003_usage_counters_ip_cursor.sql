-- 0003: quota without serialising a project's creates (usage counters kept by triggers), and
-- address allocation at the same cost for every port (a cursor per subnet). Idempotent.
-- A project's instance usage, derived from its live instances by the triggers below, so no
-- code path can leave it out of step. A create locks its project's row for one statement
-- only (its provisioning statement checks the counts and inserts in one go), and a
-- concurrent create waits on the row and re-checks the latest counts.
CREATE TABLE IF NOT EXISTS project_usage (
    project_id text PRIMARY KEY,
    instances integer NOT NULL DEFAULT 0,
    cores integer NOT NULL DEFAULT 0,
    ram bigint NOT NULL DEFAULT 0
);

CREATE OR REPLACE FUNCTION novalite_usage_insert() RETURNS trigger AS $$
BEGIN
    INSERT INTO project_usage AS u (project_id, instances, cores, ram)
    SELECT project_id, count(*), sum(vcpus), sum(memory_mb) FROM new_instances WHERE NOT deleted GROUP BY project_id
    ON CONFLICT (project_id) DO UPDATE SET instances = u.instances + EXCLUDED.instances,
        cores = u.cores + EXCLUDED.cores, ram = u.ram + EXCLUDED.ram;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION novalite_usage_change() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND NOT OLD.deleted THEN
        UPDATE project_usage SET instances = instances - 1, cores = cores - OLD.vcpus, ram = ram - OLD.memory_mb
         WHERE project_id = OLD.project_id;
    END IF;
    IF TG_OP = 'UPDATE' AND NOT NEW.deleted THEN
        INSERT INTO project_usage AS u (project_id, instances, cores, ram)
        VALUES (NEW.project_id, 1, NEW.vcpus, NEW.memory_mb)
        ON CONFLICT (project_id) DO UPDATE SET instances = u.instances + 1,
            cores = u.cores + EXCLUDED.cores, ram = u.ram + EXCLUDED.ram;
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE OR REPLACE TRIGGER instances_usage_insert AFTER INSERT ON instances
    REFERENCING NEW TABLE AS new_instances FOR EACH STATEMENT EXECUTE FUNCTION novalite_usage_insert();
CREATE OR REPLACE TRIGGER instances_usage_change AFTER UPDATE OF deleted, vcpus, memory_mb, project_id ON instances
    FOR EACH ROW WHEN (OLD.deleted IS DISTINCT FROM NEW.deleted OR OLD.vcpus IS DISTINCT FROM NEW.vcpus
                       OR OLD.memory_mb IS DISTINCT FROM NEW.memory_mb OR OLD.project_id IS DISTINCT FROM NEW.project_id)
    EXECUTE FUNCTION novalite_usage_change();
CREATE OR REPLACE TRIGGER instances_usage_delete AFTER DELETE ON instances
    FOR EACH ROW WHEN (NOT OLD.deleted) EXECUTE FUNCTION novalite_usage_change();

-- Address allocation: each subnet keeps a cursor, the address after the last one it gave
-- out. The next allocation probes from there (wrapping around the pools, so freed addresses
-- are reused once the cursor passes them): the first port on a /16 costs what the
-- thousandth does. Allocations hold the network row (as before); UNIQUE (network_id,
-- fixed_ip) on ports stays the last guard.
ALTER TABLE subnets ADD COLUMN IF NOT EXISTS ip_cursor inet;

CREATE OR REPLACE FUNCTION novalite_next_ip(sub uuid) RETURNS inet AS $$
DECLARE
    s record;
    lo inet[];
    hi inet[];
    n integer;
    i integer := 1;
    a inet;
    left_ bigint := 0;
BEGIN
    SELECT * INTO s FROM subnets WHERE id = sub;
    SELECT array_agg((e->>'start')::inet ORDER BY (e->>'start')::inet),
           array_agg((e->>'end')::inet ORDER BY (e->>'start')::inet)
      INTO lo, hi FROM jsonb_array_elements(s.allocation_pools) e;
    n := coalesce(array_length(lo, 1), 0);
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    FOR k IN 1..n LOOP
        left_ := left_ + (hi[k] - lo[k]) + 1;
    END LOOP;
    a := coalesce(s.ip_cursor, lo[1]);
    -- the pool holding the cursor, or the next one (wrapping to the first)
    WHILE i <= n AND hi[i] < a LOOP
        i := i + 1;
    END LOOP;
    IF i > n THEN
        i := 1;
        a := lo[1];
    ELSIF a < lo[i] THEN
        a := lo[i];
    END IF;
    WHILE left_ > 0 LOOP
        IF a IS DISTINCT FROM s.gateway_ip
           AND NOT EXISTS (SELECT 1 FROM ports WHERE network_id = s.network_id AND fixed_ip = a) THEN
            UPDATE subnets SET ip_cursor = a + 1 WHERE id = sub;
            RETURN a;
        END IF;
        left_ := left_ - 1;
        IF a >= hi[i] THEN
            i := i % n + 1;
            a := lo[i];
        ELSE
            a := a + 1;
        END IF;
    END LOOP;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
