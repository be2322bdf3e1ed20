-- 0012: a batch of servers' ports without a subtransaction per port (issue #22). Idempotent.
-- novalite_nova_ports (0008) caught each port's quota or address error in a BEGIN ... EXCEPTION
-- block, and such a block opens a subtransaction for every port, erring or not (a subtransaction
-- id, its own commit record). The port function now says in ``error`` what stopped it (NLQ01:
-- over the port quota, NLA01: no subnet with a free address) and makes nothing, instead of
-- raising; what it did before stopping is harmless to keep (the project's usage row and the
-- network row locked, as the failed create's transaction would have held them anyway).
DROP FUNCTION IF EXISTS novalite_nova_port(uuid, text, text, text, text, integer, integer);

CREATE FUNCTION novalite_nova_port(
    net uuid, project text, device text, owner text, bound_host text, idx integer, default_limit integer,
    OUT port_id uuid, OUT group_ids uuid[], OUT existed boolean, OUT mac text, OUT address inet, OUT sub uuid,
    OUT error text
) AS $$
DECLARE
    lim integer;
    used integer;
    security boolean;
BEGIN
    SELECT p.id, p.mac_address, p.fixed_ip, p.subnet_id INTO port_id, mac, address, sub
      FROM ports p WHERE p.device_id = device AND p.device_id <> '' AND p.device_index = idx LIMIT 1;
    existed := port_id IS NOT NULL;
    IF existed THEN
        group_ids := '{}';
        RETURN;
    END IF;
    lim := coalesce((SELECT hard_limit FROM network_quotas WHERE project_id = project AND resource = 'port'),
                    default_limit);
    INSERT INTO network_usage AS u (project_id) VALUES (project)
    ON CONFLICT (project_id) DO UPDATE SET ports = u.ports RETURNING u.ports INTO used;
    IF lim <> -1 AND used + 1 > lim THEN
        error := 'NLQ01';
        existed := NULL;
        RETURN;
    END IF;
    SELECT n.port_security_enabled INTO security FROM networks n WHERE n.id = net FOR UPDATE;
    FOR sub IN SELECT s.id FROM subnets s WHERE s.network_id = net ORDER BY s.created_at, s.id LOOP
        address := novalite_next_ip(sub);
        EXIT WHEN address IS NOT NULL;
    END LOOP;
    IF address IS NULL THEN
        error := 'NLA01';
        existed := NULL;
        sub := NULL;
        RETURN;
    END IF;
    LOOP  -- a random MAC under OpenStack's prefix until one is free
        mac := 'fa:16:3e:' || regexp_replace(substr(md5(random()::text), 1, 6), '(..)(..)(..)', '\1:\2:\3');
        INSERT INTO ports AS p (id, network_id, subnet_id, project_id, mac_address, fixed_ip, device_id,
                                device_owner, host, status, device_index, port_security_enabled)
        VALUES (gen_random_uuid(), net, sub, project, mac, address, device, owner, bound_host, 'ACTIVE', idx,
                security)
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

-- As in 0008 (items in the order of project and network, so concurrent batches lock rows in one
-- order; an erring item gets its SQLSTATE-like code in ``error``, the others are made), with the
-- port function's ``error`` instead of a caught exception.
CREATE OR REPLACE FUNCTION novalite_nova_ports(items jsonb) RETURNS TABLE (
    i integer, net uuid, port_id uuid, group_ids uuid[], existed boolean, mac text, address inet, sub uuid,
    error text
) AS $$
DECLARE
    x record;
BEGIN
    FOR x IN SELECT * FROM jsonb_to_recordset(items) AS r(i integer, net uuid, project text, device text,
                                                         owner text, bound_host text, idx integer,
                                                         default_limit integer)
             ORDER BY r.project, r.net, r.i LOOP
        i := x.i;
        net := x.net;
        SELECT p.port_id, p.group_ids, p.existed, p.mac, p.address, p.sub, p.error
          INTO port_id, group_ids, existed, mac, address, sub, error
          FROM novalite_nova_port(x.net, x.project, x.device, x.owner, x.bound_host, x.idx,
                                  x.default_limit) p;
        RETURN NEXT;
    END LOOP;
END $$ LANGUAGE plpgsql;
