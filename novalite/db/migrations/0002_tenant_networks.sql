-- Migration 0002: tenant networks and ports without a fixed IP, security group rules and
-- port bindings, Neutron quotas, the hosts' virt type, interface tags, console tokens.
-- Idempotent: a database the pre-migration schema.sql made at "version 1" may already hold
-- some or all of it (that file grew in place during this release).

-- Security groups (Neutron): stateful, timestamps, revision; their rules.
ALTER TABLE security_groups ADD COLUMN IF NOT EXISTS stateful boolean NOT NULL DEFAULT true;
ALTER TABLE security_groups ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE security_groups ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE security_groups ADD COLUMN IF NOT EXISTS revision_number integer NOT NULL DEFAULT 1;

-- Neutron's security group rules. A rule allows traffic: ingress (to the port) or
-- egress (from it), of one protocol (NULL: any) and port range (for icmp: type and
-- code), from/to remote_ip_prefix or the current addresses of remote_group_id's
-- member ports (NULL both: anywhere). Enforced by novalite.network.firewall.
-- remote_ip_prefix is inet, not cidr: Neutron keeps it as given (10.0.0.5/24) and shows
-- normalized_cidr (10.0.0.0/24) beside it.
CREATE TABLE IF NOT EXISTS security_group_rules (
    id uuid PRIMARY KEY,
    security_group_id uuid NOT NULL REFERENCES security_groups(id) ON DELETE CASCADE,
    project_id text NOT NULL,
    direction text NOT NULL CHECK (direction IN ('ingress', 'egress')),
    ethertype text NOT NULL DEFAULT 'IPv4' CHECK (ethertype IN ('IPv4', 'IPv6')),
    protocol text,
    port_range_min integer,
    port_range_max integer,
    remote_ip_prefix inet,
    remote_group_id uuid REFERENCES security_groups(id) ON DELETE CASCADE,
    description text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS security_group_rules_group ON security_group_rules (security_group_id);
CREATE INDEX IF NOT EXISTS security_group_rules_remote ON security_group_rules (remote_group_id)
    WHERE remote_group_id IS NOT NULL;
-- A table made while remote_ip_prefix was still cidr.
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'security_group_rules'
               AND column_name = 'remote_ip_prefix' AND data_type = 'cidr') THEN
        ALTER TABLE security_group_rules ALTER COLUMN remote_ip_prefix TYPE inet;
    END IF;
END $$;

-- What the host's guests run on ("kvm" or "qemu", [compute] virt_type "auto" resolved at start)
-- and the host's CPU model: a KVM guest gets the host's model, a TCG one qemu64 (os-hypervisors cpu_info).
ALTER TABLE compute_nodes ADD COLUMN IF NOT EXISTS virt_type text NOT NULL DEFAULT 'qemu';
ALTER TABLE compute_nodes ADD COLUMN IF NOT EXISTS cpu_model text;

-- config_name is set for networks made from [[networks]] (provider networks: libvirt
-- serves DHCP from the host's bridge address) and NULL for networks made through the
-- API (tenant networks: a bridge with no host address, DHCP from a namespace; their
-- names may repeat). Every network of 0001 came from config.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_name = 'networks' AND column_name = 'config_name') THEN
        ALTER TABLE networks ADD COLUMN config_name text UNIQUE;
        UPDATE networks SET config_name = name;
        ALTER TABLE networks DROP CONSTRAINT IF EXISTS networks_name_key;
    END IF;
END $$;
ALTER TABLE networks ADD COLUMN IF NOT EXISTS external boolean NOT NULL DEFAULT false;
ALTER TABLE networks ADD COLUMN IF NOT EXISTS port_security_enabled boolean NOT NULL DEFAULT true;
ALTER TABLE networks ADD COLUMN IF NOT EXISTS admin_state_up boolean NOT NULL DEFAULT true;
ALTER TABLE networks ADD COLUMN IF NOT EXISTS description text NOT NULL DEFAULT '';

ALTER TABLE subnets ADD COLUMN IF NOT EXISTS ip_version integer NOT NULL DEFAULT 4;
-- [{"start", "end"}, ...]; pool_start/pool_end are the lowest start and the highest end.
ALTER TABLE subnets ADD COLUMN IF NOT EXISTS allocation_pools jsonb NOT NULL DEFAULT '[]';
ALTER TABLE subnets ADD COLUMN IF NOT EXISTS host_routes jsonb NOT NULL DEFAULT '[]';
ALTER TABLE subnets ADD COLUMN IF NOT EXISTS description text NOT NULL DEFAULT '';
-- A subnet may have no allocation pool at all (Neutron's allocation_pools: []).
ALTER TABLE subnets ALTER COLUMN pool_start DROP NOT NULL;
ALTER TABLE subnets ALTER COLUMN pool_end DROP NOT NULL;

-- A port has at most one fixed IP (Neutron's max_fixed_ips_per_port is 1 here), none on
-- a network without a subnet.
ALTER TABLE ports ALTER COLUMN subnet_id DROP NOT NULL;
ALTER TABLE ports ALTER COLUMN fixed_ip DROP NOT NULL;
ALTER TABLE ports ADD COLUMN IF NOT EXISTS port_security_enabled boolean NOT NULL DEFAULT true;
ALTER TABLE ports ADD COLUMN IF NOT EXISTS admin_state_up boolean NOT NULL DEFAULT true;
ALTER TABLE ports ADD COLUMN IF NOT EXISTS description text NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS ports_host ON ports (host) WHERE host IS NOT NULL;

-- A port's security groups (Neutron's securitygroupportbindings). A group in use
-- cannot be deleted (409 SecurityGroupInUse).
CREATE TABLE IF NOT EXISTS port_security_groups (
    port_id uuid NOT NULL REFERENCES ports(id) ON DELETE CASCADE,
    security_group_id uuid NOT NULL REFERENCES security_groups(id) ON DELETE RESTRICT,
    PRIMARY KEY (port_id, security_group_id)
);
CREATE INDEX IF NOT EXISTS port_security_groups_group ON port_security_groups (security_group_id);

-- Neutron quota limits that differ from the defaults (novalite.network.quota).
CREATE TABLE IF NOT EXISTS network_quotas (
    project_id text NOT NULL,
    resource text NOT NULL,
    hard_limit integer NOT NULL,
    PRIMARY KEY (project_id, resource)
);

-- Nova's virtual interface tags (os-interface ``tag``, 2.49+): the tag a port got when
-- it was attached to an instance; it counts only while the port is bound to that instance.
CREATE TABLE IF NOT EXISTS virtual_interfaces (
    port_id uuid PRIMARY KEY REFERENCES ports(id) ON DELETE CASCADE,
    instance_uuid text NOT NULL,
    tag text
);

-- Console tokens (Nova's console_auth_tokens): the short-lived, single-use token of a
-- remote console URL, bound to one instance. Only its SHA-256 is kept; connecting deletes
-- the row, and the retention pass deletes expired ones (found by expires_at).
CREATE TABLE IF NOT EXISTS console_auth_tokens (
    token_hash text PRIMARY KEY,
    console_type text NOT NULL,
    instance_uuid uuid NOT NULL REFERENCES instances(uuid) ON DELETE CASCADE,
    host text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS console_auth_tokens_expires ON console_auth_tokens (expires_at);
