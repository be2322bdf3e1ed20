-- 0014: a batch of servers' ports written with one INSERT (issue #22). Idempotent.
-- novalite_nova_ports (0008, 0012) called novalite_nova_port for each port, and each made its
-- port with an INSERT of its own: the ports' statement triggers (the project's port counter, the
-- subnet's pool count) ran once per port, and the security group memberships were one INSERT
-- per port too. pg_stat_statements (track = all) gave 0.62 ms a port, 0.27 of it the INSERT.
-- Now the batch decides each port as before, in the same order and with the same locks (the
-- project's usage row, the network row, the subnet's address cursor), and then writes all its
-- ports and their memberships with one INSERT each.
--
-- Per port, as before: an instance's existing port at that index is returned untouched; the
-- port quota counts the ports made earlier in the batch; the address is the subnet's next free
-- one, past those taken earlier in the batch (not in ports yet when a cursor wraps around).
CREATE OR REPLACE FUNCTION novalite_nova_ports(items jsonb) RETURNS TABLE (
    i integer, net uuid, port_id uuid, group_ids uuid[], existed boolean, mac text, address inet, sub uuid,
    error text
) AS $$
DECLARE
    x record;
    k integer := 0;
    n integer;
    project text := NULL;
    network uuid := NULL;
    lim integer;
    used integer;
    made integer;  -- ports made in this batch for the current project
    security boolean;
    chosen text[] := '{}';
    r_i integer[] := '{}';
    r_net uuid[] := '{}';
    r_port uuid[] := '{}';
    r_existed boolean[] := '{}';
    r_mac text[] := '{}';
    r_address inet[] := '{}';
    r_sub uuid[] := '{}';
    r_error text[] := '{}';
    n_port uuid[] := '{}';  -- the ports to make: id, network, subnet, project, MAC, address,
    n_net uuid[] := '{}';   -- device, owner, host, index, port security, and their item's place
    n_sub uuid[] := '{}';
    n_project text[] := '{}';
    n_mac text[] := '{}';
    n_address inet[] := '{}';
    n_device text[] := '{}';
    n_owner text[] := '{}';
    n_host text[] := '{}';
    n_idx integer[] := '{}';
    n_security boolean[] := '{}';
    n_at integer[] := '{}';
    p_id uuid;
    p_mac text;
    p_address inet;
    p_sub uuid;
    groups jsonb;
    missing boolean;
BEGIN
    FOR x IN SELECT * FROM jsonb_to_recordset(items) AS r(i integer, net uuid, project text, device text,
                                                         owner text, bound_host text, idx integer,
                                                         default_limit integer)
             ORDER BY r.project, r.net, r.i LOOP
        k := k + 1;
        r_i[k] := x.i;
        r_net[k] := x.net;
        SELECT p.id, p.mac_address, p.fixed_ip, p.subnet_id INTO p_id, p_mac, p_address, p_sub
          FROM ports p WHERE p.device_id = x.device AND p.device_id <> '' AND p.device_index = x.idx LIMIT 1;
        IF p_id IS NOT NULL THEN  -- a retried build: its port as it is
            r_port[k] := p_id;
            r_existed[k] := true;
            r_mac[k] := p_mac;
            r_address[k] := p_address;
            r_sub[k] := p_sub;
            CONTINUE;
        END IF;
        IF project IS DISTINCT FROM x.project THEN  -- the project's counter, held until the commit
            project := x.project;
            network := NULL;
            made := 0;
            lim := coalesce((SELECT hard_limit FROM network_quotas
                              WHERE project_id = x.project AND resource = 'port'), x.default_limit);
            INSERT INTO network_usage AS u (project_id) VALUES (x.project)
            ON CONFLICT (project_id) DO UPDATE SET ports = u.ports RETURNING u.ports INTO used;
        END IF;
        IF lim <> -1 AND used + made + 1 > lim THEN
            r_error[k] := 'NLQ01';
            CONTINUE;
        END IF;
        IF network IS DISTINCT FROM x.net THEN
            network := x.net;
            SELECT nw.port_security_enabled INTO security FROM networks nw WHERE nw.id = x.net FOR UPDATE;
        END IF;
        p_address := NULL;
        FOR p_sub IN SELECT s.id FROM subnets s WHERE s.network_id = x.net ORDER BY s.created_at, s.id LOOP
            -- the cursor's next free address, past those this batch took (not in ports yet): each
            -- call moves the cursor on, so a pool whose free addresses the batch all took comes
            -- back to one of them within as many calls as the batch took
            FOR attempt IN 0..coalesce(array_length(chosen, 1), 0) LOOP
                p_address := novalite_next_ip(p_sub);
                EXIT WHEN p_address IS NULL OR NOT (x.net::text || ' ' || host(p_address)) = ANY(chosen);
                p_address := NULL;
            END LOOP;
            EXIT WHEN p_address IS NOT NULL;
        END LOOP;
        IF p_address IS NULL THEN
            r_error[k] := 'NLA01';
            CONTINUE;
        END IF;
        chosen := chosen || (x.net::text || ' ' || host(p_address));
        made := made + 1;
        n := coalesce(array_length(n_port, 1), 0) + 1;
        n_port[n] := gen_random_uuid();
        n_net[n] := x.net;
        n_sub[n] := p_sub;
        n_project[n] := x.project;
        n_mac[n] := NULL;  -- drawn when the ports are written
        n_address[n] := p_address;
        n_device[n] := x.device;
        n_owner[n] := x.owner;
        n_host[n] := x.bound_host;
        n_idx[n] := x.idx;
        n_security[n] := security;
        n_at[n] := k;
        r_port[k] := n_port[n];
        r_existed[k] := false;
        r_address[k] := p_address;
        r_sub[k] := p_sub;
    END LOOP;

    n := coalesce(array_length(n_port, 1), 0);
    IF n > 0 THEN
        LOOP  -- the ports not written yet, each with a random MAC under OpenStack's prefix
            FOR j IN 1..n LOOP
                IF n_mac[j] IS NULL THEN
                    n_mac[j] := 'fa:16:3e:' || regexp_replace(substr(md5(random()::text), 1, 6), '(..)(..)(..)',
                                                              '\1:\2:\3');
                END IF;
            END LOOP;
            INSERT INTO ports AS p (id, network_id, subnet_id, project_id, mac_address, fixed_ip, device_id,
                                    device_owner, host, status, device_index, port_security_enabled)
            SELECT w.id, w.net, w.sub, w.project, w.mac, w.address, w.device, w.owner, w.host, 'ACTIVE', w.idx,
                   w.security
              FROM unnest(n_port, n_net, n_sub, n_project, n_mac, n_address, n_device, n_owner, n_host, n_idx,
                          n_security) AS w(id, net, sub, project, mac, address, device, owner, host, idx, security)
             WHERE NOT EXISTS (SELECT 1 FROM ports p WHERE p.id = w.id)
            ON CONFLICT (mac_address) DO NOTHING;
            missing := false;
            FOR j IN 1..n LOOP  -- a MAC already taken (by another port, or twice in the batch): draw again
                IF NOT EXISTS (SELECT 1 FROM ports p WHERE p.id = n_port[j]) THEN
                    n_mac[j] := NULL;
                    missing := true;
                END IF;
            END LOOP;
            EXIT WHEN NOT missing;
        END LOOP;
        FOR j IN 1..n LOOP
            r_mac[n_at[j]] := n_mac[j];
        END LOOP;
        WITH joined AS (
            INSERT INTO port_security_groups (port_id, security_group_id)
            SELECT w.id, g.id
              FROM unnest(n_port, n_device, n_security) AS w(id, device, security)
              JOIN instances inst ON inst.uuid = w.device::uuid
              JOIN security_groups g ON g.project_id = inst.project_id AND g.name = ANY(inst.security_groups)
             WHERE w.security
            ON CONFLICT DO NOTHING RETURNING port_security_groups.port_id, security_group_id)
        SELECT jsonb_object_agg(per_port.port_id, per_port.ids) INTO groups
          FROM (SELECT joined.port_id, jsonb_agg(DISTINCT security_group_id) AS ids FROM joined
                GROUP BY joined.port_id) per_port;
    END IF;

    FOR j IN 1..k LOOP
        i := r_i[j];
        net := r_net[j];
        error := r_error[j];
        port_id := r_port[j];
        existed := r_existed[j];
        mac := r_mac[j];
        address := r_address[j];
        sub := r_sub[j];
        group_ids := NULL;
        IF error IS NULL THEN
            group_ids := '{}';
            IF NOT existed AND groups ? port_id::text THEN  -- a port made here
                group_ids := ARRAY(SELECT jsonb_array_elements_text(groups -> port_id::text))::uuid[];
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END $$ LANGUAGE plpgsql;

-- novalite_nova_ports made each port through this; nothing else does.
DROP FUNCTION IF EXISTS novalite_nova_port(uuid, text, text, text, text, integer, integer);
