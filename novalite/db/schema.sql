-- novalite: the whole schema. Applied idempotently at start (`novalite db upgrade`).
-- Later changes go into novalite/db/migrations.py keyed by schema_version.

CREATE TABLE IF NOT EXISTS schema_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version integer NOT NULL
);

-- Identity (Keystone v3 subset, domain "default" only) ---------------------

CREATE TABLE IF NOT EXISTS projects (
    id text PRIMARY KEY,
    name text NOT NULL,
    domain_id text NOT NULL DEFAULT 'default',
    description text NOT NULL DEFAULT '',
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (domain_id, name)
);

CREATE TABLE IF NOT EXISTS users (
    id text PRIMARY KEY,
    name text NOT NULL,
    domain_id text NOT NULL DEFAULT 'default',
    password_hash text,
    enabled boolean NOT NULL DEFAULT true,
    default_project_id text REFERENCES projects(id) ON DELETE SET NULL,
    email text,
    description text,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (domain_id, name)
);

-- Keystone's lockout (novalite.identity): consecutive failed password checks and the last one's time.
ALTER TABLE users ADD COLUMN IF NOT EXISTS failed_auth_count integer NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN IF NOT EXISTS failed_auth_at timestamptz;

CREATE TABLE IF NOT EXISTS roles (
    id text PRIMARY KEY,
    name text NOT NULL UNIQUE
);

CREATE TABLE IF NOT EXISTS role_assignments (
    user_id text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    project_id text NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    role_id text NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, project_id, role_id)
);

CREATE TABLE IF NOT EXISTS tokens (
    id text PRIMARY KEY,
    user_id text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    project_id text REFERENCES projects(id) ON DELETE CASCADE,
    methods text[] NOT NULL,
    issued_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    revoked boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS tokens_expires ON tokens (expires_at);
-- Revoked tokens wait here for the purge (novalite.retention), which finds them by this index.
CREATE INDEX IF NOT EXISTS tokens_revoked ON tokens (id) WHERE revoked;

-- Compute catalog: flavors, keypairs, images (until the image API), hosts ---

CREATE TABLE IF NOT EXISTS flavors (
    flavorid text PRIMARY KEY,
    name text NOT NULL UNIQUE,
    memory_mb integer NOT NULL,
    vcpus integer NOT NULL,
    root_gb integer NOT NULL DEFAULT 0,
    ephemeral_gb integer NOT NULL DEFAULT 0,
    swap integer NOT NULL DEFAULT 0,
    rxtx_factor double precision NOT NULL DEFAULT 1.0,
    is_public boolean NOT NULL DEFAULT true,
    disabled boolean NOT NULL DEFAULT false,
    description text,
    extra_specs jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS flavor_projects (
    flavorid text NOT NULL REFERENCES flavors(flavorid) ON DELETE CASCADE,
    project_id text NOT NULL,
    PRIMARY KEY (flavorid, project_id)
);

CREATE TABLE IF NOT EXISTS key_pairs (
    user_id text NOT NULL,
    name text NOT NULL,
    fingerprint text NOT NULL,
    public_key text NOT NULL,
    type text NOT NULL DEFAULT 'ssh',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, name)
);

CREATE TABLE IF NOT EXISTS images (
    id uuid PRIMARY KEY,
    name text,
    owner text,
    status text NOT NULL DEFAULT 'queued',
    visibility text NOT NULL DEFAULT 'shared',
    disk_format text,
    container_format text,
    min_disk integer NOT NULL DEFAULT 0,
    min_ram integer NOT NULL DEFAULT 0,
    size bigint,
    checksum text,
    properties jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Image API (Glance v2 subset, issue 6): the rest of Glance's base attributes;
-- data lives in <state dir>/images/<id>. Extra properties stay in `properties`.
ALTER TABLE images ADD COLUMN IF NOT EXISTS protected boolean NOT NULL DEFAULT false;
ALTER TABLE images ADD COLUMN IF NOT EXISTS os_hidden boolean NOT NULL DEFAULT false;
ALTER TABLE images ADD COLUMN IF NOT EXISTS os_hash_algo text;
ALTER TABLE images ADD COLUMN IF NOT EXISTS os_hash_value text;
ALTER TABLE images ADD COLUMN IF NOT EXISTS virtual_size bigint;
ALTER TABLE images ADD COLUMN IF NOT EXISTS tags text[] NOT NULL DEFAULT '{}';

-- Projects a `shared` image is shared with (Glance image members).
CREATE TABLE IF NOT EXISTS image_members (
    image_id uuid NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    member text NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, member)
);

-- One row per configured compute host (nova-compute service + its node).
CREATE TABLE IF NOT EXISTS compute_nodes (
    id serial PRIMARY KEY,
    host text NOT NULL UNIQUE,
    hypervisor_hostname text NOT NULL,
    uuid uuid NOT NULL UNIQUE,
    service_uuid uuid NOT NULL UNIQUE,
    uri text NOT NULL,
    availability_zone text NOT NULL,
    hypervisor_type text NOT NULL DEFAULT 'QEMU',
    hypervisor_version integer NOT NULL DEFAULT 0,
    cpu_arch text NOT NULL DEFAULT 'x86_64',
    vcpus integer NOT NULL DEFAULT 0,
    memory_mb integer NOT NULL DEFAULT 0,
    local_gb integer NOT NULL DEFAULT 0,
    disabled boolean NOT NULL DEFAULT false,
    disabled_reason text,
    forced_down boolean NOT NULL DEFAULT false,
    heartbeat_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Quota limits that differ from the config defaults.
CREATE TABLE IF NOT EXISTS quotas (
    project_id text NOT NULL,
    resource text NOT NULL,
    hard_limit integer NOT NULL,
    PRIMARY KEY (project_id, resource)
);

CREATE TABLE IF NOT EXISTS security_groups (
    id uuid PRIMARY KEY,
    project_id text NOT NULL,
    name text NOT NULL,
    description text NOT NULL DEFAULT '',
    UNIQUE (project_id, name)
);
ALTER TABLE security_groups ADD COLUMN IF NOT EXISTS stateful boolean NOT NULL DEFAULT true;
ALTER TABLE security_groups ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE security_groups ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE security_groups ADD COLUMN IF NOT EXISTS revision_number integer NOT NULL DEFAULT 1;

-- Neutron's security group rules. A rule allows traffic: ingress (to the port) or
-- egress (from it), of one protocol (NULL: any) and port range (for icmp: type and
-- code), from/to remote_ip_prefix or the current addresses of remote_group_id's
-- member ports (NULL both: anywhere). Enforced by novalite.network.firewall.
CREATE TABLE IF NOT EXISTS security_group_rules (
    id uuid PRIMARY KEY,
    security_group_id uuid NOT NULL REFERENCES security_groups(id) ON DELETE CASCADE,
    project_id text NOT NULL,
    direction text NOT NULL CHECK (direction IN ('ingress', 'egress')),
    ethertype text NOT NULL DEFAULT 'IPv4' CHECK (ethertype IN ('IPv4', 'IPv6')),
    protocol text,
    port_range_min integer,
    port_range_max integer,
    remote_ip_prefix cidr,
    remote_group_id uuid REFERENCES security_groups(id) ON DELETE CASCADE,
    description text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS security_group_rules_group ON security_group_rules (security_group_id);
CREATE INDEX IF NOT EXISTS security_group_rules_remote ON security_group_rules (remote_group_id)
    WHERE remote_group_id IS NOT NULL;
-- inet, not cidr: Neutron keeps remote_ip_prefix as given (10.0.0.5/24) and shows
-- normalized_cidr (10.0.0.0/24) beside it.
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'security_group_rules'
               AND column_name = 'remote_ip_prefix' AND data_type = 'cidr') THEN
        ALTER TABLE security_group_rules ALTER COLUMN remote_ip_prefix TYPE inet;
    END IF;
END $$;

CREATE TABLE IF NOT EXISTS instance_groups (
    uuid uuid PRIMARY KEY,
    project_id text NOT NULL,
    user_id text NOT NULL,
    name text NOT NULL,
    policy text NOT NULL,
    rules jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Instances -----------------------------------------------------------------

CREATE TABLE IF NOT EXISTS instances (
    id bigserial UNIQUE,
    uuid uuid PRIMARY KEY,
    project_id text NOT NULL,
    user_id text NOT NULL,
    display_name text NOT NULL,
    display_description text,
    hostname text NOT NULL,
    reservation_id text NOT NULL,
    launch_index integer NOT NULL DEFAULT 0,
    vm_state text NOT NULL,
    task_state text,
    power_state integer NOT NULL DEFAULT 0,
    host text,
    node text,
    launched_on text,
    availability_zone text,
    flavor jsonb NOT NULL,
    vcpus integer NOT NULL,
    memory_mb integer NOT NULL,
    root_gb integer NOT NULL,
    ephemeral_gb integer NOT NULL,
    image_ref text NOT NULL DEFAULT '',
    kernel_id text NOT NULL DEFAULT '',
    ramdisk_id text NOT NULL DEFAULT '',
    key_name text,
    key_data text,
    user_data text,
    config_drive text NOT NULL DEFAULT '',
    auto_disk_config boolean NOT NULL DEFAULT false,
    access_ip_v4 inet,
    access_ip_v6 inet,
    root_device_name text,
    metadata jsonb NOT NULL DEFAULT '{}',
    system_metadata jsonb NOT NULL DEFAULT '{}',
    security_groups text[] NOT NULL DEFAULT '{}',
    tags text[] NOT NULL DEFAULT '{}',
    injected_files jsonb NOT NULL DEFAULT '[]',
    requested_networks jsonb,
    request_spec jsonb NOT NULL DEFAULT '{}',
    instance_group uuid REFERENCES instance_groups(uuid) ON DELETE SET NULL,
    locked boolean NOT NULL DEFAULT false,
    locked_by text,
    locked_reason text,
    progress integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    launched_at timestamptz,
    terminated_at timestamptz,
    deleted boolean NOT NULL DEFAULT false,
    deleted_at timestamptz
);
CREATE INDEX IF NOT EXISTS instances_project ON instances (project_id, deleted, created_at DESC);
CREATE INDEX IF NOT EXISTS instances_reservation ON instances (reservation_id);
CREATE INDEX IF NOT EXISTS instances_host ON instances (host) WHERE NOT deleted;
CREATE INDEX IF NOT EXISTS instances_in_flight ON instances (task_state) WHERE task_state IS NOT NULL;
CREATE INDEX IF NOT EXISTS instances_updated ON instances (updated_at);

CREATE TABLE IF NOT EXISTS instance_group_members (
    group_uuid uuid NOT NULL REFERENCES instance_groups(uuid) ON DELETE CASCADE,
    instance_uuid uuid NOT NULL,
    PRIMARY KEY (group_uuid, instance_uuid)
);

CREATE TABLE IF NOT EXISTS instance_faults (
    id bigserial PRIMARY KEY,
    instance_uuid uuid NOT NULL REFERENCES instances(uuid) ON DELETE CASCADE,
    code integer NOT NULL,
    message text NOT NULL,
    details text NOT NULL DEFAULT '',
    host text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS instance_faults_instance ON instance_faults (instance_uuid, id DESC);

CREATE TABLE IF NOT EXISTS block_device_mappings (
    id bigserial PRIMARY KEY,
    instance_uuid uuid NOT NULL REFERENCES instances(uuid) ON DELETE CASCADE,
    source_type text NOT NULL,
    destination_type text,
    device_name text,
    boot_index integer,
    image_id text,
    volume_id text,
    snapshot_id text,
    volume_size integer,
    device_type text,
    disk_bus text,
    guest_format text,
    delete_on_termination boolean NOT NULL DEFAULT false,
    tag text,
    volume_type text,
    deleted boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS bdm_instance ON block_device_mappings (instance_uuid);
-- A volume can be attached to one live instance only.
CREATE UNIQUE INDEX IF NOT EXISTS bdm_volume_once ON block_device_mappings (volume_id)
    WHERE volume_id IS NOT NULL AND NOT deleted;

-- Resources claimed on a host by an instance (one row per instance).
CREATE TABLE IF NOT EXISTS allocations (
    instance_uuid uuid PRIMARY KEY,
    host text NOT NULL,
    vcpus integer NOT NULL,
    memory_mb integer NOT NULL,
    disk_gb integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS allocations_host ON allocations (host);

CREATE TABLE IF NOT EXISTS instance_actions (
    id bigserial PRIMARY KEY,
    action text NOT NULL,
    instance_uuid uuid NOT NULL,
    request_id text NOT NULL,
    user_id text,
    project_id text,
    start_time timestamptz NOT NULL DEFAULT now(),
    finish_time timestamptz,
    message text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS instance_actions_instance ON instance_actions (instance_uuid, id);
CREATE INDEX IF NOT EXISTS instance_actions_request ON instance_actions (instance_uuid, request_id);

CREATE TABLE IF NOT EXISTS instance_actions_events (
    id bigserial PRIMARY KEY,
    action_id bigint NOT NULL REFERENCES instance_actions(id) ON DELETE CASCADE,
    event text NOT NULL,
    start_time timestamptz NOT NULL DEFAULT now(),
    finish_time timestamptz,
    result text,
    traceback text,
    host text,
    details text
);
CREATE INDEX IF NOT EXISTS instance_actions_events_action ON instance_actions_events (action_id, id);

-- Versioned notifications, kept so tests and operators can read them.
CREATE TABLE IF NOT EXISTS notifications (
    id bigserial PRIMARY KEY,
    event_type text NOT NULL,
    priority text NOT NULL DEFAULT 'INFO',
    publisher_id text NOT NULL,
    instance_uuid uuid,
    request_id text,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS notifications_instance ON notifications (instance_uuid, id);
-- Kept [retention] notifications_days; the purge takes the oldest by this index, a batch at a time.
CREATE INDEX IF NOT EXISTS notifications_created ON notifications (created_at);

-- Scheduler (issue 5) ----------------------------------------------------------

-- NUMA cells a host offers (NUMATopologyFilter) and its recent build failures
-- (BuildFailureWeigher), kept beside the node.
ALTER TABLE compute_nodes ADD COLUMN IF NOT EXISTS numa_cells integer NOT NULL DEFAULT 1;
ALTER TABLE compute_nodes ADD COLUMN IF NOT EXISTS failed_builds integer NOT NULL DEFAULT 0;
-- What the host's guests run on ("kvm" or "qemu", [compute] virt_type "auto" resolved at start)
-- and the host's CPU model: a KVM guest gets the host's model, a TCG one qemu64 (os-hypervisors cpu_info).
ALTER TABLE compute_nodes ADD COLUMN IF NOT EXISTS virt_type text NOT NULL DEFAULT 'qemu';
ALTER TABLE compute_nodes ADD COLUMN IF NOT EXISTS cpu_model text;

-- failed_builds follows build outcomes as Nova's compute manager counts them:
-- +1 when a building instance is sent back to scheduling from a host (the
-- build failed there), reset to 0 when a build on the host turns ACTIVE.
-- A trigger on the one compare-and-set path, so no failure path can forget it.
CREATE OR REPLACE FUNCTION novalite_track_build_outcome() RETURNS trigger AS $$
BEGIN
    IF OLD.vm_state = 'building' AND NEW.vm_state = 'active' AND NEW.host IS NOT NULL THEN
        UPDATE compute_nodes SET failed_builds = 0 WHERE host = NEW.host AND failed_builds <> 0;
    ELSIF OLD.vm_state = 'building' AND NEW.vm_state = 'building' AND OLD.host IS NOT NULL
          AND NEW.host IS NULL AND NEW.task_state = 'scheduling' THEN
        UPDATE compute_nodes SET failed_builds = failed_builds + 1 WHERE host = OLD.host;
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER instances_build_outcome AFTER UPDATE OF vm_state, host ON instances
    FOR EACH ROW WHEN (OLD.vm_state = 'building') EXECUTE FUNCTION novalite_track_build_outcome();

-- The verdicts of each scheduling of an instance: every filter's verdict on
-- every host and the weights of the hosts that passed (one row per scheduling;
-- the latest is served at GET /servers/{id}/os-scheduling).
CREATE TABLE IF NOT EXISTS scheduling_verdicts (
    id bigserial PRIMARY KEY,
    instance_uuid uuid NOT NULL REFERENCES instances(uuid) ON DELETE CASCADE,
    request_id text,
    host text,
    summary text NOT NULL,
    verdicts jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS scheduling_verdicts_instance ON scheduling_verdicts (instance_uuid, id DESC);
-- Kept [retention] scheduling_verdicts_days (novalite.retention purges by this index).
CREATE INDEX IF NOT EXISTS scheduling_verdicts_created ON scheduling_verdicts (created_at);

-- Networks (Neutron v2 subset): isolated libvirt networks, one IPv4 subnet each --

-- config_name is set for networks made from [[networks]] (provider networks: libvirt
-- serves DHCP from the host's bridge address) and NULL for networks made through the
-- API (tenant networks: a bridge with no host address, DHCP from a namespace).
CREATE TABLE IF NOT EXISTS networks (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    config_name text UNIQUE,
    project_id text NOT NULL,
    shared boolean NOT NULL DEFAULT true,
    is_default boolean NOT NULL DEFAULT false,
    libvirt_name text NOT NULL UNIQUE,
    mtu integer NOT NULL DEFAULT 1500,
    status text NOT NULL DEFAULT 'ACTIVE',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Databases from before API-made networks: every network then came from config.
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

CREATE TABLE IF NOT EXISTS subnets (
    id uuid PRIMARY KEY,
    network_id uuid NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
    name text NOT NULL DEFAULT '',
    project_id text NOT NULL,
    cidr cidr NOT NULL,
    gateway_ip inet,
    pool_start inet NOT NULL,
    pool_end inet NOT NULL,
    enable_dhcp boolean NOT NULL DEFAULT true,
    dns_nameservers text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS subnets_network ON subnets (network_id);
ALTER TABLE subnets ADD COLUMN IF NOT EXISTS ip_version integer NOT NULL DEFAULT 4;
-- [{"start", "end"}, ...]; pool_start/pool_end are the lowest start and the highest end.
ALTER TABLE subnets ADD COLUMN IF NOT EXISTS allocation_pools jsonb NOT NULL DEFAULT '[]';
ALTER TABLE subnets ADD COLUMN IF NOT EXISTS host_routes jsonb NOT NULL DEFAULT '[]';
ALTER TABLE subnets ADD COLUMN IF NOT EXISTS description text NOT NULL DEFAULT '';
-- A subnet may have no allocation pool at all (Neutron's allocation_pools: []).
ALTER TABLE subnets ALTER COLUMN pool_start DROP NOT NULL;
ALTER TABLE subnets ALTER COLUMN pool_end DROP NOT NULL;

-- A port: one MAC and at most one fixed IP on a network (Neutron's max_fixed_ips_per_port
-- is 1 here; none on a network without a subnet); device_id is the instance uuid.
-- The unique constraints make MAC and IP allocation race-free.
CREATE TABLE IF NOT EXISTS ports (
    id uuid PRIMARY KEY,
    network_id uuid NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
    subnet_id uuid NOT NULL REFERENCES subnets(id) ON DELETE CASCADE,
    project_id text NOT NULL,
    name text NOT NULL DEFAULT '',
    mac_address text NOT NULL UNIQUE,
    fixed_ip inet NOT NULL,
    device_id text NOT NULL DEFAULT '',
    device_owner text NOT NULL DEFAULT '',
    host text,
    status text NOT NULL DEFAULT 'DOWN',
    -- Created by the user (kept, unbound, when its instance goes) or for an instance.
    preserve_on_delete boolean NOT NULL DEFAULT false,
    -- NIC order within the instance (the order of requested networks).
    device_index integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (network_id, fixed_ip)
);
CREATE INDEX IF NOT EXISTS ports_device ON ports (device_id) WHERE device_id <> '';
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

-- Lifecycle and crash safety (issue 7) ------------------------------------------

-- When the instance entered its current (vm_state, task_state): the watchdog's
-- deadlines count from here. A trigger, so every writer (compare-and-set, the
-- scheduler's claim) keeps it right.
ALTER TABLE instances ADD COLUMN IF NOT EXISTS task_state_since timestamptz NOT NULL DEFAULT now();
CREATE OR REPLACE FUNCTION novalite_task_state_since() RETURNS trigger AS $$
BEGIN
    IF NEW.task_state IS DISTINCT FROM OLD.task_state OR NEW.vm_state IS DISTINCT FROM OLD.vm_state THEN
        NEW.task_state_since := clock_timestamp();
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER instances_task_state_since BEFORE UPDATE OF task_state, vm_state ON instances
    FOR EACH ROW EXECUTE FUNCTION novalite_task_state_since();
-- The watchdog's scan of in-flight instances uses instances_in_flight (task_state) above.

-- Volumes (issue 8): Cinder's volumes and snapshots on libvirt storage pools --------
-- A volume's data lives in one host's pool (host, pool_name, vol_name); every status
-- change is a compare-and-set on status (novalite.db.volumes). One attachment per
-- volume: instance_uuid/mountpoint are set from `reserved` to `detaching`.
CREATE TABLE IF NOT EXISTS volumes (
    id uuid PRIMARY KEY,
    project_id text NOT NULL,
    user_id text NOT NULL,
    name text,
    description text,
    size integer NOT NULL CHECK (size > 0),
    status text NOT NULL,
    host text,
    pool_name text,
    vol_name text,
    path text,
    format text NOT NULL DEFAULT 'qcow2',
    availability_zone text NOT NULL DEFAULT 'nova',
    volume_type text NOT NULL DEFAULT '__DEFAULT__',
    bootable boolean NOT NULL DEFAULT false,
    image_id text,
    snapshot_id uuid,
    source_volid uuid,
    metadata jsonb NOT NULL DEFAULT '{}',
    instance_uuid uuid,
    mountpoint text,
    attachment_id uuid,
    attached_at timestamptz,
    -- Made by a build for this instance (image/blank/snapshot BDM): deleted if that build fails.
    created_for uuid,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted boolean NOT NULL DEFAULT false,
    deleted_at timestamptz
);
CREATE INDEX IF NOT EXISTS volumes_project ON volumes (project_id) WHERE NOT deleted;
CREATE INDEX IF NOT EXISTS volumes_instance ON volumes (instance_uuid) WHERE instance_uuid IS NOT NULL;

CREATE TABLE IF NOT EXISTS volume_snapshots (
    id uuid PRIMARY KEY,
    volume_id uuid NOT NULL REFERENCES volumes(id),
    project_id text NOT NULL,
    user_id text NOT NULL,
    name text,
    description text,
    size integer NOT NULL,
    status text NOT NULL,
    host text,
    pool_name text,
    vol_name text,
    path text,
    metadata jsonb NOT NULL DEFAULT '{}',
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted boolean NOT NULL DEFAULT false,
    deleted_at timestamptz
);
CREATE INDEX IF NOT EXISTS volume_snapshots_volume ON volume_snapshots (volume_id) WHERE NOT deleted;
-- Nova's BDM uuid and attachment id (os-volume_attachments 2.89).
ALTER TABLE block_device_mappings ADD COLUMN IF NOT EXISTS uuid uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE block_device_mappings ADD COLUMN IF NOT EXISTS attachment_id uuid;

-- Host usage counters, kept by a trigger on allocations (the claims), so usage is
-- still derived from allocations but a claim can check and lock a host's row in
-- one statement: a concurrent claim waits on the row and re-checks the new counts.
ALTER TABLE compute_nodes ADD COLUMN IF NOT EXISTS vcpus_used integer NOT NULL DEFAULT 0;
ALTER TABLE compute_nodes ADD COLUMN IF NOT EXISTS memory_mb_used integer NOT NULL DEFAULT 0;
ALTER TABLE compute_nodes ADD COLUMN IF NOT EXISTS disk_gb_used integer NOT NULL DEFAULT 0;
ALTER TABLE compute_nodes ADD COLUMN IF NOT EXISTS instances_used integer NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION novalite_allocation_usage() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE compute_nodes SET vcpus_used = vcpus_used - OLD.vcpus, memory_mb_used = memory_mb_used - OLD.memory_mb,
               disk_gb_used = disk_gb_used - OLD.disk_gb, instances_used = instances_used - 1
         WHERE host = OLD.host;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE compute_nodes SET vcpus_used = vcpus_used + NEW.vcpus, memory_mb_used = memory_mb_used + NEW.memory_mb,
               disk_gb_used = disk_gb_used + NEW.disk_gb, instances_used = instances_used + 1
         WHERE host = NEW.host;
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS allocations_usage ON allocations;
CREATE TRIGGER allocations_usage AFTER INSERT OR UPDATE OR DELETE ON allocations
    FOR EACH ROW EXECUTE FUNCTION novalite_allocation_usage();

-- Re-derive the counters from the claims at every start (cheap; repairs anything).
UPDATE compute_nodes n SET vcpus_used = coalesce(a.v, 0), memory_mb_used = coalesce(a.m, 0),
       disk_gb_used = coalesce(a.d, 0), instances_used = coalesce(a.c, 0)
  FROM compute_nodes n2 LEFT JOIN (SELECT host, sum(vcpus) AS v, sum(memory_mb) AS m, sum(disk_gb) AS d,
                                          count(*) AS c FROM allocations GROUP BY host) a ON a.host = n2.host
 WHERE n.host = n2.host
   AND (n.vcpus_used, n.memory_mb_used, n.disk_gb_used, n.instances_used)
       IS DISTINCT FROM (coalesce(a.v, 0)::int, coalesce(a.m, 0)::int, coalesce(a.d, 0)::int, coalesce(a.c, 0)::int);

-- Resize (issue 19) ---------------------------------------------------------------
-- Nova's migration records: one per resize, its status moving pre-migrating →
-- migrating → post-migrating → finished → confirming/confirmed or reverting/reverted
-- (or error). While a resize is in flight the source host's claim is held by the
-- migration: its allocations row carries the migration's uuid as the consumer.
-- Flavors get Nova's integer id (the migration's old/new_instance_type_id).
ALTER TABLE flavors ADD COLUMN IF NOT EXISTS internal_id bigserial;
CREATE TABLE IF NOT EXISTS migrations (
    id bigserial PRIMARY KEY,
    uuid uuid NOT NULL UNIQUE,
    instance_uuid uuid NOT NULL REFERENCES instances(uuid) ON DELETE CASCADE,
    project_id text,
    user_id text,
    migration_type text NOT NULL DEFAULT 'resize',
    status text NOT NULL,
    source_compute text,
    source_node text,
    dest_compute text,
    dest_node text,
    dest_host text,
    old_instance_type_id bigint,
    new_instance_type_id bigint,
    old_flavor jsonb NOT NULL,
    new_flavor jsonb NOT NULL,
    old_vm_state text NOT NULL,
    request_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz,
    deleted boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS migrations_instance ON migrations (instance_uuid, id DESC);
CREATE INDEX IF NOT EXISTS migrations_open ON migrations (status)
    WHERE status NOT IN ('confirmed', 'reverted', 'error');

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

INSERT INTO schema_version (version) VALUES (1) ON CONFLICT (singleton) DO NOTHING;

-- #22 quota without serialising a project's creates; O(1) address allocation -----------
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

-- Re-derive the counters from the live instances at every start (cheap; repairs anything).
INSERT INTO project_usage AS u (project_id, instances, cores, ram)
SELECT project_id, count(*), sum(vcpus), sum(memory_mb) FROM instances WHERE NOT deleted GROUP BY project_id
ON CONFLICT (project_id) DO UPDATE SET instances = EXCLUDED.instances, cores = EXCLUDED.cores, ram = EXCLUDED.ram
 WHERE (u.instances, u.cores, u.ram) IS DISTINCT FROM (EXCLUDED.instances, EXCLUDED.cores, EXCLUDED.ram);
UPDATE project_usage u SET instances = 0, cores = 0, ram = 0
 WHERE (u.instances, u.cores, u.ram) IS DISTINCT FROM (0, 0, 0)
   AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.project_id = u.project_id AND NOT i.deleted);

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
