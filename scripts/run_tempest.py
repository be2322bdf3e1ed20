"""Run Tempest's compute and network API tests against a fresh novalite (``make tempest``).

Starts ``novalite serve`` in a workspace (default ``.tempest/``) with simulated
hosts and a private Postgres, provisions what Tempest needs through the public
APIs (per project a member, a reader and a manager user plus admins, two active images;
flavors m1.tiny and m1.small differ in RAM; the default network ``private``;
Neutron quotas for the projects and an external network ``public``),
writes ``tempest.conf`` and ``accounts.yaml``, and runs the tests listed in
``scripts/tempest-include.txt`` minus ``scripts/tempest-exclude.txt`` with
stestr (concurrency 2). The server is stopped at the end; its log stays in the
workspace.

    .venv/bin/python scripts/run_tempest.py [--workspace DIR] [--regex R] [--qemu]
    .venv/bin/python scripts/run_tempest.py --lab-host NAME   # migrations between real hosts

``--lab-host NAME`` replaces the simulated hosts with two real ones: this machine's
``qemu:///system`` (host ``local``) and a second libvirtd started by ``scripts/lab-host.sh up
NAME`` (sharing no filesystem with novalite), and runs ``scripts/tempest-migrations.txt``
(cold migration with confirm/revert, live block migration, migrations list, unshelve to a
host) with real TCG guests of the test image. The lab host is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
INCLUDE = REPO / "scripts" / "tempest-include.txt"
MIGRATIONS = REPO / "scripts" / "tempest-migrations.txt"
LAB_HOST = REPO / "scripts" / "lab-host.sh"
LAB_BRIDGE = "nltempest-br"  # the bare bridge of a --lab-host run
EXCLUDE = REPO / "scripts" / "tempest-exclude.txt"
MAX_MICROVERSION = "2.96"  # novalite's advertised maximum (api/middleware.py)
PROJECTS = 6  # member + reader per project; stestr workers draw from these
# Neutron quotas of Tempest's projects: a cloud for Tempest lifts Neutron's defaults
# (10 security groups) above what one worker's tests make between cleanups.
NETWORK_QUOTA = {"network": 100, "subnet": 100, "port": 500, "security_group": 100,
                 "security_group_rule": 1000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(ws: Path, port: int, qemu: bool, lab: tuple[str, str] | None = None) -> Path:
    """novalite's config.toml: two simulated hosts (plus ``local`` with --qemu), or with ``lab``
    (name, URI) the real ``local`` and the lab host, both in the default zone."""
    hosts = "".join(
        f'[[hosts]]\nname = "sim{i}"\nsimulate = {{ vcpus = 64, memory_mb = 131072, disk_gb = 2000 }}\n\n'
        for i in (1, 2)
    )
    real = ""
    if lab:
        hosts = (f'[[hosts]]\nname = "local"\nuri = "qemu:///system"\n\n'
                 f'[[hosts]]\nname = "{lab[0]}"\nuri = "{lab[1]}"\n')
        # Both daemons' bridges are this machine's, so one isolated subnet cannot live on both
        # (each DHCP server would hold its gateway): `private` is a provider network on a bare
        # bridge of the run's own (LAB_BRIDGE), where nothing holds an address.
        real = f"""
[compute]
virt_type = "qemu"
shutdown_timeout = 5

[[networks]]
name = "private"
cidr = "10.251.7.0/24"
shared = true
forward = "bridge"
bridge = "{LAB_BRIDGE}"
"""
    elif qemu:
        hosts += '[[hosts]]\nname = "local"\nuri = "qemu:///system"\navailability_zone = "qemu"\n'
    text = f"""
[api]
listen = "127.0.0.1"
port = {port}
user_clouds_yaml = false

[state]
dir = "{ws / 'state'}"

[log]
level = "info"
format = "json"

[identity]
bcrypt_rounds = 4

[policy]
file = "{ws / 'policy.yaml'}"

[networking]
libvirt_prefix = "nltempest-"
{real}

{hosts}
"""
    path = ws / "config.toml"
    path.write_text(text)
    return path


async def wait_up(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"novalite exited with {proc.returncode}")
            try:
                async with s.get(f"{url}/compute/") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
    raise SystemExit("novalite did not come up")


class Admin:
    """Just enough of the identity API to pre-provision Tempest's accounts."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str):
        self.s, self.url, self.h = session, url, {"X-Auth-Token": token}

    @classmethod
    async def login(cls, session: aiohttp.ClientSession, url: str, password: str) -> Admin:
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"name": "Default"}, "password": password}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}
        async with session.post(f"{url}/identity/v3/auth/tokens", json=body) as r:
            assert r.status == 201, await r.text()
            return cls(session, url, r.headers["X-Subject-Token"])

    async def call(self, method: str, path: str, body=None, status=(200, 201, 204)) -> dict:
        async with self.s.request(method, f"{self.url}{path}", json=body, headers=self.h) as r:
            text = await r.text()
            assert r.status in status, f"{method} {path}: {r.status} {text}"
            return json.loads(text) if text else {}

    async def role_id(self, name: str) -> str:
        roles = (await self.call("GET", "/identity/v3/roles"))["roles"]
        return next(r["id"] for r in roles if r["name"] == name)

    async def project(self, name: str) -> str:
        return (await self.call("POST", "/identity/v3/projects",
                                {"project": {"name": name, "domain_id": "default"}}))["project"]["id"]

    async def network_quota(self, project_id: str) -> None:
        """Give the project Tempest's Neutron quotas (admin's PUT /quotas/{project})."""
        await self.call("PUT", f"/networking/v2.0/quotas/{project_id}", {"quota": NETWORK_QUOTA})

    async def network_extensions(self) -> list[str]:
        """The aliases novalite's Neutron advertises (GET /extensions), for api_extensions."""
        return [e["alias"] for e in (await self.call("GET", "/networking/v2.0/extensions"))["extensions"]]

    async def public_network(self) -> str:
        """An external network as a cloud's ``public`` (public_network_id), owned by a ``service``
        project no Tempest account is in, so it is no project's own network for servers."""
        owner = await self.project("service")
        net = (await self.call("POST", "/networking/v2.0/networks", {"network": {
            "name": "public", "router:external": True, "project_id": owner}}))["network"]
        await self.call("POST", "/networking/v2.0/subnets", {"subnet": {
            "network_id": net["id"], "cidr": "172.24.4.0/24", "ip_version": 4, "enable_dhcp": False,
            "name": "public-subnet", "project_id": owner}})
        return net["id"]

    async def user(self, name: str, password: str, project_id: str, role_id: str) -> None:
        user = (await self.call("POST", "/identity/v3/users", {"user": {
            "name": name, "password": password, "domain_id": "default",
            "default_project_id": project_id}}))["user"]
        await self.call("PUT", f"/identity/v3/projects/{project_id}/users/{user['id']}/roles/{role_id}")


async def provision(url: str, creds: dict, ws: Path) -> dict:
    from novalite.image import testimage

    async with aiohttp.ClientSession() as session:
        admin = await Admin.login(session, url, creds["admin"])
        roles = {n: await admin.role_id(n) for n in ("admin", "manager", "member", "reader")}
        members, readers, managers, admins = [], [], [], []
        for i in range(1, PROJECTS + 1):
            pid = await admin.project(f"tempest-project-{i}")
            await admin.network_quota(pid)
            for kind, bucket in (("member", members), ("reader", readers), ("manager", managers)):
                name, pw = f"tempest-{kind}-{i}", secrets.token_urlsafe(12)
                await admin.user(name, pw, pid, roles[kind])
                bucket.append({"username": name, "project_name": f"tempest-project-{i}",
                               "password": pw, "roles": [kind]})
        for i in (1, 2):
            pid = await admin.project(f"tempest-admin-project-{i}")
            await admin.network_quota(pid)
            name, pw = f"tempest-admin-{i}", secrets.token_urlsafe(12)
            await admin.user(name, pw, pid, roles["admin"])
            admins.append({"username": name, "project_name": f"tempest-admin-project-{i}",
                           "password": pw, "types": ["admin"], "roles": ["admin"]})
        # Members first: Tempest's unscoped requests (alt) take the first free account.
        accounts = members + readers + managers + admins
        image = await asyncio.to_thread(testimage.build, Path(os.environ.get(
            "NOVALITE_TEST_IMAGE_CACHE", "/var/tmp/novalite-testimage-cache")))
        first = await testimage.upload(image, url, "admin", creds["admin"], token=admin.h["X-Auth-Token"])
        second = await testimage.upload(image, url, "admin", creds["admin"], token=admin.h["X-Auth-Token"])
        return {"accounts": accounts, "admin_password": creds["admin"], "image_ref": first["ami"],
                "image_ref_alt": second["ami"], "network_extensions": await admin.network_extensions(),
                "public_network_id": await admin.public_network()}


def tempest_conf(ws: Path, url: str, env: dict, qemu: bool) -> str:
    sections = {
        "DEFAULT": {"log_dir": str(ws / "logs"), "log_file": "tempest.log", "debug": "true"},
        "oslo_concurrency": {"lock_path": str(ws / "locks")},
        "auth": {
            "use_dynamic_credentials": "false",
            "test_accounts_file": str(ws / "etc" / "accounts.yaml"),
            "default_credentials_domain_name": "Default",
            "admin_domain_name": "Default",
            "tempest_roles": "member",
            "create_isolated_networks": "false",
            # The bootstrap admin: a few admin tests ask for "the configured admin".
            "admin_username": "admin",
            "admin_password": env["admin_password"],
            "admin_project_name": "admin",
        },
        "identity": {
            "uri_v3": f"{url}/identity/v3",
            "auth_version": "v3",
            "region": "RegionOne",
            "v3_endpoint_type": "public",
            "disable_ssl_certificate_validation": "true",
        },
        "identity-feature-enabled": {"api_v2": "false", "security_compliance": "false"},
        "compute": {
            "image_ref": env["image_ref"],
            "image_ref_alt": env["image_ref_alt"],
            "flavor_ref": "1",
            "flavor_ref_alt": "2",
            "min_microversion": "2.1",
            "max_microversion": MAX_MICROVERSION,
            "fixed_network_name": "private",
            "build_timeout": "120",
            "build_interval": "1",
            "region": "RegionOne",
            "endpoint_type": "publicURL",
            "min_compute_nodes": "2",
            "compute_volume_common_az": "",
        },
        "compute-feature-enabled": {
            "nova_policy_roles": "admin,manager,member,reader",  # Nova 2025.1's defaults: managers migrate
            "resize": "true", "cold_migration": "true", "live_migration": "true",
            "block_migration_for_live_migration": "true", "live_migrate_back_and_forth": "true",
            "snapshot": "true", "rescue": "true",
            "shelve": "true", "shelve_migrate": "false", "change_password": "false",
            "console_output": "true", "vnc_console": "false", "spice_console": "false",
            "serial_console": "false", "rdp_console": "false", "interface_attach": "true",
            "config_drive": "true", "personality": "true", "pause": "true", "suspend": "true",
            "metadata_service": "false", "attach_encrypted_volume": "false",
            "swap_volume": "false", "volume_multiattach": "false", "hostname_fqdn_sanitization": "true",
            "scheduler_enabled_filters": "AvailabilityZoneFilter,ComputeFilter,"
            "ComputeCapabilitiesFilter,ImagePropertiesFilter,ServerGroupAntiAffinityFilter,"
            "ServerGroupAffinityFilter,SameHostFilter,DifferentHostFilter",
            "disk_config": "true", "stable_rescue": "false", "unified_limits": "false",
        },
        "image": {"region": "RegionOne", "endpoint_type": "publicURL"},
        "image-feature-enabled": {"api_v1": "false", "api_v2": "true"},
        "network": {
            "region": "RegionOne", "endpoint_type": "publicURL", "shared_physical_network": "false",
            # Tempest's own networks: one /28 per subnet out of this block (private is elsewhere).
            "project_network_cidr": "10.100.0.0/16", "project_network_mask_bits": "28",
            "build_timeout": "120", "build_interval": "1", "public_network_id": env["public_network_id"],
        },
        "network-feature-enabled": {
            "ipv6": "false", "floating_ips": "false", "port_security": "true",
            "port_admin_state_change": "true", "ipv6_subnet_attributes": "false",
            "api_extensions": ",".join(env["network_extensions"]),
        },
        "service_available": {
            "nova": "true", "glance": "true", "neutron": "true", "cinder": "false",
            "swift": "false", "horizon": "false", "keystone": "true",
        },
        "validation": {"run_validation": "false", "connect_method": "fixed"},
    }
    lines = []
    for name, opts in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {v}" for k, v in opts.items()]
        lines.append("")
    return "\n".join(lines)


def selection(ws: Path, regex: str | None, lab: bool = False) -> list[str]:
    """Arguments to `tempest run` choosing the tests."""
    if regex:
        return ["--regex", regex]
    if lab:
        return ["--include-list", str(MIGRATIONS)]
    # The simulated hosts move guests too (a domain defined on the destination): both lists.
    both = ws / "include.txt"
    both.write_text(INCLUDE.read_text() + MIGRATIONS.read_text())
    args = ["--include-list", str(both)]
    if EXCLUDE.exists():
        args += ["--exclude-list", str(EXCLUDE)]
    return args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default=str(REPO / ".tempest"))
    parser.add_argument("--regex", default=None, help="run these tests instead of the committed list")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="stestr workers (2; 1 with --lab-host: its two libvirt daemons share one kernel, and "
                             "ebtables-nft changes made by both at once fail with RULE_DELETE)")
    parser.add_argument("--qemu", action="store_true", help="also manage qemu:///system as host `local`")
    parser.add_argument("--lab-host", metavar="NAME", default=None,
                        help="real hosts: qemu:///system and a scripts/lab-host.sh host NAME; run the migration tests")
    parser.add_argument("--keep", action="store_true", help="leave the server running (Ctrl-C stops it)")
    args = parser.parse_args()

    ws = Path(args.workspace).resolve()
    if ws.exists():
        shutil.rmtree(ws)
    (ws / "etc").mkdir(parents=True)
    (ws / "logs").mkdir()
    (ws / "locks").mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    lab = None
    if args.lab_host:
        subprocess.run(["ip", "link", "add", LAB_BRIDGE, "type", "bridge"], check=False)
        uri = subprocess.run(["bash", str(LAB_HOST), "up", args.lab_host, str(ws / "state")],
                             check=True, capture_output=True, text=True).stdout.split()[-1]
        lab = (args.lab_host, uri)
    config = write_config(ws, port, args.qemu, lab)
    log = open(ws / "novalite.log", "w")
    server = subprocess.Popen(
        [str(BIN / "novalite"), "--config", str(config), "serve", "--no-test-image", "--clouds-yaml", str(ws / "clouds.yaml")],
        stdout=log, stderr=subprocess.STDOUT, cwd=ws, start_new_session=True,
    )
    try:
        asyncio.run(wait_up(url, server))
        creds = json.loads((ws / "state" / "credentials.json").read_text())
        env = asyncio.run(provision(url, creds, ws))
        (ws / "etc" / "accounts.yaml").write_text(yaml.safe_dump(env["accounts"], sort_keys=False))
        (ws / "etc" / "tempest.conf").write_text(tempest_conf(ws, url, env, args.qemu))
        print(f"novalite on {url}; workspace {ws}", flush=True)
        cmd = [str(BIN / "tempest"), "run", "--concurrency", str(args.concurrency or (1 if lab else 2)),
               "--config-file", str(ws / "etc" / "tempest.conf"), *selection(ws, args.regex, bool(lab))]
        rc = subprocess.call(cmd, cwd=ws)
        if args.keep:
            print("server still running; Ctrl-C to stop", flush=True)
            try:
                server.wait()
            except KeyboardInterrupt:
                pass
        return rc
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        log.close()
        if lab:
            subprocess.run(["bash", str(LAB_HOST), "down", lab[0]], check=False)
            subprocess.run(["ip", "link", "del", LAB_BRIDGE], check=False)


if __name__ == "__main__":
    sys.exit(main())
