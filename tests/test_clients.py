"""Unmodified clients: the `openstack` CLI at its default and at the latest microversion, and
openstacksdk's proxy and cloud layers, against a running server with simulated hosts (and one
real guest for `console log show`).

What other modules already drive through the CLI (token/catalog/versions in test_identity,
flavors, images, keypairs, hosts, quotas at the default microversion) is not repeated here
except where the latest microversion changes the documents.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import openstack
import pytest
from conftest import add_image, cli_json, wait_for_status
from test_guest_e2e import guest_cloud, test_image  # noqa: F401  (fixtures of the qemu test)

from novalite.api import keys

ADMIN = "novalite-admin"
DEFAULT: tuple[str, ...] = ()
LATEST = ("--os-compute-api-version", "2.latest")


def cli(cloud, mv: tuple[str, ...]):
    """`openstack` at the given microversion; parsed JSON with `-f json`, else the text."""

    async def run(*args: str, cloud_name: str = "novalite"):
        _, out, _ = await cloud.openstack(*mv, *args, cloud=cloud_name)
        return cli_json(out) if "-f" in args else out

    return run


async def test_cli_server_cycle_at_default_and_latest_microversions(cloud, tmp_path):
    """The same user session twice at once: the CLI's default negotiation and 2.latest."""
    await add_image(cloud, name="cirros")
    await asyncio.gather(*(_server_cycle(cloud, tmp_path, mv, p) for mv, p in ((DEFAULT, "d"), (LATEST, "l"))))


async def _server_cycle(cloud, tmp_path: Path, mv: tuple[str, ...], p: str) -> None:
    os_ = cli(cloud, mv)
    user_data = tmp_path / f"{p}-user-data"
    user_data.write_text("#!/bin/sh\necho hello\n")
    nets, group, key = await asyncio.gather(
        os_("network", "list", "-f", "json"),
        os_("server", "group", "create", "--policy", "anti-affinity", f"{p}-grp", "-f", "json"),
        os_("keypair", "create", "--private-key", str(tmp_path / f"{p}-k1.pem"), f"{p}-k1", "-f", "json"),
    )
    assert [n["Name"] for n in nets] == ["private"]
    assert group["policy"] == "anti-affinity"
    assert key["name"] == f"{p}-k1" and (tmp_path / f"{p}-k1.pem").read_text().startswith("-----BEGIN")

    created, _ = await asyncio.gather(
        os_(
            "server", "create", "--image", "cirros", "--flavor", "m1.tiny", "--key-name", f"{p}-k1",
            "--user-data", str(user_data), "--property", "role=web", "--config-drive", "True",
            "--nic", f"net-id={nets[0]['ID']}", "--hint", f"group={group['id']}", "--wait", f"{p}-vm1",
            "-f", "json",
        ),
        os_(
            "server", "create", "--image", "cirros", "--flavor", "m1.tiny", "--nic", "none",
            "--min", "2", "--max", "2", "--wait", f"{p}-pair", "-f", "json",
        ),
    )
    assert created["status"] == "ACTIVE"
    assert created["key_name"] == f"{p}-k1"
    assert created["addresses"]["private"][0].startswith("10.20.0.")
    vm1 = created["id"]

    listed, shown, events, group_shown, groups = await asyncio.gather(
        os_("server", "list", "--name", f"^{p}-", "-f", "json"),
        os_("server", "show", f"{p}-vm1", "-f", "json"),
        os_("server", "event", "list", f"{p}-vm1", "-f", "json"),
        os_("server", "group", "show", f"{p}-grp", "-f", "json"),
        os_("server", "group", "list", "-f", "json"),
    )
    assert sorted((s["Name"], s["Status"]) for s in listed) == [
        (f"{p}-pair-1", "ACTIVE"), (f"{p}-pair-2", "ACTIVE"), (f"{p}-vm1", "ACTIVE")
    ]
    assert shown["config_drive"] in ("True", True)
    assert "role" in str(shown["properties"])
    assert group_shown["members"] in ([vm1], vm1)
    assert f"{p}-grp" in [g["Name"] for g in groups]
    assert [e["Action"] for e in events] == ["create"]
    event = await os_("server", "event", "show", f"{p}-vm1", events[0]["Request ID"], "-f", "json")
    assert event["action"] == "create" and event["request_id"] == events[0]["Request ID"]

    # A simulated host has no guest: its console says so.
    _, log, _ = await cloud.openstack(*mv, "console", "log", "show", "--lines", "3", f"{p}-vm1")
    assert len(log.rstrip("\n").splitlines()) == 3 and "login:" in log

    await os_("server", "stop", f"{p}-vm1")
    await wait_for_status(cloud, vm1, "SHUTOFF")
    await os_("server", "start", f"{p}-vm1")
    await wait_for_status(cloud, vm1, "ACTIVE")
    await os_("server", "reboot", "--hard", "--wait", f"{p}-vm1")
    await os_("server", "lock", f"{p}-vm1")
    _, body, _ = await cloud.compute("GET", f"/servers/{vm1}", version="2.9")
    assert body["server"]["locked"] is True
    await os_("server", "unlock", f"{p}-vm1")
    _, body, _ = await cloud.compute("GET", f"/servers/{vm1}", version="2.9")
    assert body["server"]["locked"] is False

    await os_("server", "delete", "--wait", f"{p}-vm1", f"{p}-pair-1", f"{p}-pair-2")
    await asyncio.gather(os_("server", "group", "delete", f"{p}-grp"), os_("keypair", "delete", f"{p}-k1"))
    servers, groups, keys = await asyncio.gather(
        os_("server", "list", "--name", f"^{p}-", "-f", "json"), os_("server", "group", "list", "-f", "json"),
        os_("keypair", "list", "-f", "json"),
    )
    assert servers == [] and f"{p}-grp" not in str(groups) and f"{p}-k1" not in str(keys)


async def test_cli_admin_reads_and_settings(cloud):
    await add_image(cloud, name="cirros")
    await cloud.openstack("server", "create", "--image", "cirros", "--flavor", "m1.small", "--nic", "none",
                          "--wait", "u1")
    await asyncio.gather(_admin_reads(cloud, DEFAULT), _admin_reads(cloud, LATEST))
    os_ = cli(cloud, DEFAULT)
    await asyncio.gather(
        os_("compute", "service", "set", "--disable", "--disable-reason", "maint", "sim2", "nova-compute",
            cloud_name=ADMIN),
        os_("quota", "set", "--instances", "7", "--cores", "9", "demo", cloud_name=ADMIN),
    )
    for mv in (DEFAULT, LATEST):
        os_ = cli(cloud, mv)
        services, quota, limits = await asyncio.gather(
            os_("compute", "service", "list", "-f", "json", cloud_name=ADMIN),
            os_("quota", "show", "-f", "json"),
            os_("limits", "show", "--absolute", "-f", "json"),
        )
        assert {s["Host"]: s["Status"] for s in services} == {"sim1": "enabled", "sim2": "disabled"}
        assert {"Resource": "instances", "Limit": 7} in quota and {"Resource": "cores", "Limit": 9} in quota
        assert {"Name": "instances", "Value": 7} in limits


async def _admin_reads(cloud, mv: tuple[str, ...]) -> None:
    os_ = cli(cloud, mv)
    zones, hypervisors, hypervisor, services, quota, limits, flavors, usage = await asyncio.gather(
        os_("availability", "zone", "list", "-f", "json"),
        os_("hypervisor", "list", "-f", "json", cloud_name=ADMIN),
        os_("hypervisor", "show", "sim1", "-f", "json", cloud_name=ADMIN),
        os_("compute", "service", "list", "-f", "json", cloud_name=ADMIN),
        os_("quota", "show", "-f", "json"),
        os_("limits", "show", "--absolute", "-f", "json"),
        os_("flavor", "list", "-f", "json"),
        os_("usage", "list", "-f", "json", cloud_name=ADMIN),
    )
    assert {z["Zone Name"] for z in zones} == {"nova"}
    assert sorted(h["Hypervisor Hostname"] for h in hypervisors) == ["sim1", "sim2"]
    assert hypervisor["hypervisor_hostname"] == "sim1"
    assert sorted(s["Host"] for s in services) == ["sim1", "sim2"]
    assert {"Resource": "instances", "Limit": 10} in quota
    assert {"Name": "instances_used", "Value": 1} in limits
    assert {f["Name"] for f in flavors} >= {"m1.tiny", "m1.small"}
    (row,) = usage  # the SDK sends detailed=True, which Nova (and so novalite) reads as not "1"
    demo = await cloud.app[keys.DB].fetchval("SELECT id FROM projects WHERE name = 'demo'")
    assert row["Project"] == demo and float(row["RAM MB-Hours"]) >= 0


def _connect(cloud, user: str = "demo"):
    project = "admin" if user == "admin" else "demo"
    return openstack.connect(
        auth_url=f"{cloud.url}/identity",
        username=user,
        password=cloud.creds[user],
        project_name=project,
        user_domain_name="Default",
        project_domain_name="Default",
        region_name=cloud.config.identity.region,
        identity_api_version="3",
    )


async def test_sdk_proxy_and_cloud_layers(cloud):
    image_id = await add_image(cloud, name="cirros")
    conn = _connect(cloud)
    run = asyncio.to_thread
    try:
        images = await run(lambda: [i.name for i in conn.image.images()])
        assert images == ["cirros"]
        networks = await run(lambda: [(n.name, n.is_shared) for n in conn.network.networks()])
        assert networks == [("private", True)]
        subnets = await run(lambda: [s.cidr for s in conn.network.subnets()])
        assert subnets == ["10.20.0.0/24"]
        flavor = await run(conn.compute.find_flavor, "m1.tiny")

        # Proxy layer.
        server = await run(
            conn.compute.create_server, name="sdk-proxy", image_id=image_id, flavor_id=flavor.id,
            networks="auto",
        )
        server = await run(conn.compute.wait_for_server, server, status="ACTIVE", wait=60, interval=0.2)
        assert server.status == "ACTIVE" and server.addresses["private"][0]["addr"].startswith("10.20.0.")
        names = await run(lambda: [s.name for s in conn.compute.servers()])
        assert names == ["sdk-proxy"]
        await run(conn.compute.delete_server, server)
        await run(conn.compute.wait_for_delete, server, wait=60, interval=0.2)

        # Cloud layer: deletes a server that comes up without an address; this one must keep it.
        made = await run(conn.create_server, "sdk-cloud", image="cirros", flavor="m1.tiny", wait=True, timeout=60)
        assert made.status == "ACTIVE" and made.private_v4.startswith("10.20.0.")
        assert [s.name for s in await run(conn.list_servers)] == ["sdk-cloud"]
        assert await run(conn.delete_server, "sdk-cloud", wait=True, timeout=60)
        assert await run(conn.list_servers) == []
    finally:
        await run(conn.close)


@pytest.mark.qemu
async def test_cli_console_log_of_a_real_guest(guest_cloud, tmp_path: Path):  # noqa: F811
    cloud = guest_cloud
    user_data = tmp_path / "ud"
    user_data.write_text("hello from the cli")
    created = await cloud.openstack_json(
        "--os-compute-api-version", "2.latest", "server", "create", "--image", cloud.image_ids["ami"],
        "--flavor", "m1.tiny", "--user-data", str(user_data), "--config-drive", "True", "--wait", "cli-guest",
    )
    assert created["status"] == "ACTIVE"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while True:
        _, log, _ = await cloud.openstack("console", "log", "show", "cli-guest")
        if "NOVALITE-GUEST: init done" in log:
            break
        assert loop.time() < deadline, log[-2000:]
        await asyncio.sleep(2)
    assert "NOVALITE-GUEST: user_data=hello from the cli" in log
    _, tail, _ = await cloud.openstack("console", "log", "show", "--lines", "2", "cli-guest")
    assert len(tail.rstrip("\n").splitlines()) <= 2
    await cloud.openstack("server", "delete", "--wait", "cli-guest")
