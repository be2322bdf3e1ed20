-- 0011: a subnet's free addresses without counting its ports (issue #22). Idempotent.
-- Every create on a network asks how many addresses are free (the 403 when none is). That
-- count read a range of the (network_id, fixed_ip) index per pool: 10 ms a create with
-- 20,000 ports on a /16 (bench/scale.py), the largest statement of a storm on a lived
-- database. Now each subnet keeps how many ports hold an address of its pools, kept by the
-- triggers below as network_usage is (0005), and recounted when its pools change.
ALTER TABLE subnets ADD COLUMN IF NOT EXISTS pool_used bigint NOT NULL DEFAULT 0;

-- Whether ``a`` lies in one of ``pools`` (a subnet's allocation_pools).
CREATE OR REPLACE FUNCTION novalite_in_pools(pools jsonb, a inet) RETURNS boolean AS $$
    SELECT EXISTS (SELECT 1 FROM jsonb_array_elements(pools) e
                   WHERE a BETWEEN (e->>'start')::inet AND (e->>'end')::inet)
$$ LANGUAGE sql IMMUTABLE;

-- The subnet whose pools hold ``a`` on network ``net`` (a subnet's pools lie in its CIDR, which
-- no other subnet of the network overlaps: found by address, as the count this replaces did).
CREATE OR REPLACE FUNCTION novalite_pool_used_move(net uuid, a inet, delta integer) RETURNS void AS $$
    UPDATE subnets s SET pool_used = s.pool_used + delta
     WHERE s.network_id = net AND a <<= s.cidr AND novalite_in_pools(s.allocation_pools, a)
$$ LANGUAGE sql;

-- A statement's inserted or deleted ports, counted per subnet in one update (subnets locked in
-- id order, so two statements take them in one order).
CREATE OR REPLACE FUNCTION novalite_pool_used_statement() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        WITH held AS (SELECT s.id, count(*) AS n FROM new_ports p
                        JOIN subnets s ON s.network_id = p.network_id AND p.fixed_ip <<= s.cidr
                       WHERE novalite_in_pools(s.allocation_pools, p.fixed_ip) GROUP BY s.id),
             locked AS (SELECT s.id FROM subnets s JOIN held USING (id) ORDER BY s.id FOR NO KEY UPDATE OF s)
        UPDATE subnets s SET pool_used = s.pool_used + held.n FROM held JOIN locked USING (id) WHERE s.id = held.id;
    ELSE
        WITH held AS (SELECT s.id, count(*) AS n FROM old_ports p
                        JOIN subnets s ON s.network_id = p.network_id AND p.fixed_ip <<= s.cidr
                       WHERE novalite_in_pools(s.allocation_pools, p.fixed_ip) GROUP BY s.id),
             locked AS (SELECT s.id FROM subnets s JOIN held USING (id) ORDER BY s.id FOR NO KEY UPDATE OF s)
        UPDATE subnets s SET pool_used = s.pool_used - held.n FROM held JOIN locked USING (id) WHERE s.id = held.id;
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION novalite_pool_used_change() RETURNS trigger AS $$
BEGIN
    IF OLD.fixed_ip IS NOT NULL THEN
        PERFORM novalite_pool_used_move(OLD.network_id, OLD.fixed_ip, -1);
    END IF;
    IF NEW.fixed_ip IS NOT NULL THEN
        PERFORM novalite_pool_used_move(NEW.network_id, NEW.fixed_ip, 1);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE OR REPLACE TRIGGER ports_pool_used_insert AFTER INSERT ON ports
    REFERENCING NEW TABLE AS new_ports FOR EACH STATEMENT EXECUTE FUNCTION novalite_pool_used_statement();
CREATE OR REPLACE TRIGGER ports_pool_used_delete AFTER DELETE ON ports
    REFERENCING OLD TABLE AS old_ports FOR EACH STATEMENT EXECUTE FUNCTION novalite_pool_used_statement();
CREATE OR REPLACE TRIGGER ports_pool_used_change AFTER UPDATE OF network_id, fixed_ip ON ports
    FOR EACH ROW WHEN (OLD.network_id IS DISTINCT FROM NEW.network_id OR OLD.fixed_ip IS DISTINCT FROM NEW.fixed_ip)
    EXECUTE FUNCTION novalite_pool_used_change();

-- New pools (or a new CIDR): the subnet's ports counted again against them.
CREATE OR REPLACE FUNCTION novalite_pool_used_recount() RETURNS trigger AS $$
BEGIN
    NEW.pool_used := (SELECT count(*) FROM ports p
                       WHERE p.network_id = NEW.network_id AND p.fixed_ip <<= NEW.cidr
                         AND novalite_in_pools(NEW.allocation_pools, p.fixed_ip));
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER subnets_pool_used_recount BEFORE UPDATE OF allocation_pools, cidr ON subnets
    FOR EACH ROW WHEN (OLD.allocation_pools IS DISTINCT FROM NEW.allocation_pools OR OLD.cidr IS DISTINCT FROM NEW.cidr)
    EXECUTE FUNCTION novalite_pool_used_recount();

UPDATE subnets s SET pool_used = (SELECT count(*) FROM ports p
                                   WHERE p.network_id = s.network_id AND p.fixed_ip <<= s.cidr
                                     AND novalite_in_pools(s.allocation_pools, p.fixed_ip));
