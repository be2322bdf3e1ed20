-- 0005: a server's port in one statement (issue #22). Idempotent.
-- A project's Neutron port usage, derived from its ports by the triggers below (DHCP ports
-- are the cloud's, not the project's, and are not counted). A port create holds its
-- project's row while it checks and inserts (the row, not an advisory lock for the whole
-- create, serialises a project's port creates), so the port quota stays exact.
CREATE TABLE IF NOT EXISTS network_usage (
    project_id text PRIMARY KEY,
    ports integer NOT NULL DEFAULT 0
);

CREATE OR REPLACE FUNCTION novalite_port_usage_insert() RETURNS trigger AS $$
BEGIN
    INSERT INTO network_usage AS u (project_id, ports)
    SELECT project_id, count(*) FROM new_ports WHERE device_owner <> 'network:dhcp' GROUP BY project_id
    ON CONFLICT (project_id) DO UPDATE SET ports = u.ports + EXCLUDED.ports;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION novalite_port_usage_delete() RETURNS trigger AS $$
BEGIN
    UPDATE network_usage u SET ports = u.ports - d.n
      FROM (SELECT project_id, count(*) AS n FROM old_ports WHERE device_owner <> 'network:dhcp'
            GROUP BY project_id) d
     WHERE u.project_id = d.project_id;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION novalite_port_usage_change() RETURNS trigger AS $$
BEGIN
    IF OLD.device_owner <> 'network:dhcp' THEN
        UPDATE network_usage SET ports = ports - 1 WHERE project_id = OLD.project_id;
    END IF;
    IF NEW.device_owner <> 'network:dhcp' THEN
        INSERT INTO network_usage AS u (project_id, ports) VALUES (NEW.project_id, 1)
        ON CONFLICT (project_id) DO UPDATE SET ports = u.ports + 1;
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE OR REPLACE TRIGGER ports_usage_insert AFTER INSERT ON ports
    REFERENCING NEW TABLE AS new_ports FOR EACH STATEMENT EXECUTE FUNCTION novalite_port_usage_insert();
CREATE OR REPLACE TRIGGER ports_usage_delete AFTER DELETE ON ports
    REFERENCING OLD TABLE AS old_ports FOR EACH STATEMENT EXECUTE FUNCTION novalite_port_usage_delete();
CREATE OR REPLACE TRIGGER ports_usage_change AFTER UPDATE OF project_id, device_owner ON ports
    FOR EACH ROW WHEN (OLD.project_id IS DISTINCT FROM NEW.project_id
                       OR OLD.device_owner IS DISTINCT FROM NEW.device_owner)
    EXECUTE FUNCTION novalite_port_usage_change();

INSERT INTO network_usage AS u (project_id, ports)
SELECT project_id, count(*) FROM ports WHERE device_owner <> 'network:dhcp' GROUP BY project_id
ON CONFLICT (project_id) DO UPDATE SET ports = EXCLUDED.ports;

-- The port a build makes for a server on a network, with the next free address: the
-- project's port quota checked on its usage row (held to the end of the transaction, so
-- a concurrent create waits and sees this port counted), the network row held as every
-- allocation on it does (see novalite_next_ip), the port inserted with a fresh random MAC
-- and the network's port security, and made a member of the instance's security groups
-- (by project and name) when its port security is on. One round trip for what was a
-- transaction of nine statements. Raises SQLSTATE NLQ01 (over the port quota) or NLA01
-- (no subnet with a free address); returns the port's id and the groups it joined.
CREATE OR REPLACE FUNCTION novalite_nova_port(
    net uuid, project text, device text, owner text, bound_host text, idx integer, default_limit integer,
    OUT port_id uuid, OUT group_ids uuid[]
) AS $$
DECLARE
    lim integer;
    used integer;
    security boolean;
    sub uuid;
    addr inet;
BEGIN
    lim := coalesce((SELECT hard_limit FROM network_quotas WHERE project_id = project AND resource = 'port'),
                    default_limit);
    INSERT INTO network_usage AS u (project_id) VALUES (project)
    ON CONFLICT (project_id) DO UPDATE SET ports = u.ports RETURNING u.ports INTO used;
    IF lim <> -1 AND used + 1 > lim THEN
        RAISE EXCEPTION 'Quota exceeded for resources: [''port''].' USING ERRCODE = 'NLQ01';
    END IF;
    SELECT n.port_security_enabled INTO security FROM networks n WHERE n.id = net FOR UPDATE;
    FOR sub IN SELECT s.id FROM subnets s WHERE s.network_id = net ORDER BY s.created_at, s.id LOOP
        addr := novalite_next_ip(sub);
        EXIT WHEN addr IS NOT NULL;
    END LOOP;
    IF addr IS NULL THEN
        RAISE EXCEPTION 'no more addresses on network %', net USING ERRCODE = 'NLA01';
    END IF;
    LOOP  -- a random MAC under OpenStack's prefix until one is free
        INSERT INTO ports AS p (id, network_id, subnet_id, project_id, mac_address, fixed_ip, device_id,
                                device_owner, host, status, device_index, port_security_enabled)
        VALUES (gen_random_uuid(), net, sub, project,
                'fa:16:3e:' || regexp_replace(substr(md5(random()::text), 1, 6), '(..)(..)(..)', '\1:\2:\3'),
                addr, device, owner, bound_host, 'ACTIVE', idx, security)
        ON CONFLICT (mac_address) DO NOTHING RETURNING p.id INTO port_id;
        EXIT WHEN port_id IS NOT NULL;
    END LOOP;
    IF security THEN
        WITH joined AS (
            INSERT INTO port_security_groups (port_id, security_group_id)
            SELECT novalite_nova_port.port_id, g.id FROM instances i
              JOIN security_groups g ON g.project_id = i.project_id AND g.name = ANY(i.security_groups)
             WHERE i.uuid = device::uuid
            ON CONFLICT DO NOTHING RETURNING security_group_id)
        SELECT array_agg(DISTINCT security_group_id) INTO group_ids FROM joined;
    END IF;
    group_ids := coalesce(group_ids, '{}');
END $$ LANGUAGE plpgsql;
