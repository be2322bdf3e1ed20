"""os-quota-sets and limits over real HTTP and the real CLI."""

from __future__ import annotations

import uuid

import pytest

from novalite.api import keys

CORE = {"cores", "instances", "ram", "metadata_items", "key_pairs", "server_groups", "server_group_members"}
INJECTED = {"injected_files", "injected_file_content_bytes", "injected_file_path_bytes"}
NETWORK = {"fixed_ips", "floating_ips", "security_groups", "security_group_rules"}


@pytest.fixture
async def demo_project(cloud) -> str:
    return await cloud.app[keys.DB].fetchval("SELECT id FROM projects WHERE name = 'demo'")


async def add_instance(cloud, project_id: str, vcpus: int, ram: int) -> None:
    await cloud.app[keys.DB].execute(
        """INSERT INTO instances (uuid, project_id, user_id, display_name, hostname, reservation_id, vm_state,
                                  flavor, vcpus, memory_mb, root_gb, ephemeral_gb)
           VALUES ($1, $2, 'u', 'vm', 'vm', 'r-1', 'active', '{}', $3, $4, 1, 0)""",
        uuid.uuid4(), project_id, vcpus, ram,
    )


async def test_show_fields_follow_microversion(cloud, demo_project):
    _, old, _ = await cloud.compute("GET", f"/os-quota-sets/{demo_project}")
    assert set(old["quota_set"]) == CORE | INJECTED | NETWORK | {"id"}
    assert old["quota_set"]["instances"] == 10 and old["quota_set"]["floating_ips"] == -1
    _, v236, _ = await cloud.compute("GET", f"/os-quota-sets/{demo_project}", version="2.36")
    assert set(v236["quota_set"]) == CORE | INJECTED | {"id"}
    _, v257, _ = await cloud.compute("GET", f"/os-quota-sets/{demo_project}", version="2.57")
    assert set(v257["quota_set"]) == CORE | {"id"}
    _, defaults, _ = await cloud.compute("GET", f"/os-quota-sets/{demo_project}/defaults", version="2.57")
    assert defaults["quota_set"]["cores"] == 20 and defaults["quota_set"]["id"] == demo_project
    status, body, _ = await cloud.compute("GET", "/os-quota-sets/nope")
    assert status == 403  # a member may only read their own project
    status, body, _ = await cloud.compute("GET", "/os-quota-sets/nope", user="admin")
    assert status == 400 and body["badRequest"]["message"] == "Project ID nope is not a valid project."


async def test_detail_counts_usage(cloud, demo_project):
    await add_instance(cloud, demo_project, 2, 1024)
    _, body, _ = await cloud.compute("GET", f"/os-quota-sets/{demo_project}/detail", version="2.57")
    qs = body["quota_set"]
    assert qs["instances"] == {"in_use": 1, "limit": 10, "reserved": 0}
    assert qs["cores"] == {"in_use": 2, "limit": 20, "reserved": 0}
    assert qs["ram"]["in_use"] == 1024


async def test_update_validates_and_reverts(cloud, demo_project):
    status, _, _ = await cloud.compute("PUT", f"/os-quota-sets/{demo_project}", json_body={"quota_set": {"cores": 5}})
    assert status == 403
    status, body, _ = await cloud.compute(
        "PUT", f"/os-quota-sets/{demo_project}", user="admin", json_body={"quota_set": {"cores": -2}}
    )
    assert status == 400
    assert body["badRequest"]["message"] == (
        "Invalid input for field/attribute cores. Value: -2. -2 is less than the minimum of -1"
    )
    status, body, _ = await cloud.compute(
        "PUT", f"/os-quota-sets/{demo_project}", user="admin", version="2.57",
        json_body={"quota_set": {"injected_files": 1}},
    )
    assert status == 400 and "('injected_files' was unexpected)" in body["badRequest"]["message"]
    await add_instance(cloud, demo_project, 4, 512)
    status, body, _ = await cloud.compute(
        "PUT", f"/os-quota-sets/{demo_project}", user="admin", json_body={"quota_set": {"cores": 3}}
    )
    assert status == 400
    assert body["badRequest"]["message"] == (
        "Quota limit 3 for cores must be greater than or equal to already used and reserved 4."
    )
    status, body, _ = await cloud.compute(
        "PUT", f"/os-quota-sets/{demo_project}", user="admin",
        json_body={"quota_set": {"cores": "3", "force": True, "instances": 7}},
    )
    assert status == 200
    assert "id" not in body["quota_set"]
    assert body["quota_set"]["cores"] == 3 and body["quota_set"]["instances"] == 7
    status, body, _ = await cloud.compute("DELETE", f"/os-quota-sets/{demo_project}", user="admin")
    assert status == 202 and body is None
    _, body, _ = await cloud.compute("GET", f"/os-quota-sets/{demo_project}")
    assert body["quota_set"]["cores"] == 20


async def test_limits_absolute_by_microversion(cloud, demo_project):
    await add_instance(cloud, demo_project, 2, 256)
    _, body, _ = await cloud.compute("GET", "/limits")
    absolute = body["limits"]["absolute"]
    assert body["limits"]["rate"] == []
    assert absolute["maxTotalInstances"] == 10 and absolute["totalInstancesUsed"] == 1
    assert absolute["totalCoresUsed"] == 2 and absolute["totalRAMUsed"] == 256
    assert {"maxTotalFloatingIps", "maxSecurityGroups", "totalFloatingIpsUsed", "maxImageMeta"} <= set(absolute)
    _, body, _ = await cloud.compute("GET", "/limits", version="2.57")
    assert set(body["limits"]["absolute"]) == {
        "maxTotalInstances", "maxTotalCores", "maxTotalRAMSize", "maxServerMeta", "maxTotalKeypairs",
        "maxServerGroups", "maxServerGroupMembers", "totalInstancesUsed", "totalCoresUsed", "totalRAMUsed",
        "totalServerGroupsUsed",
    }
    status, _, _ = await cloud.compute("GET", f"/limits?tenant_id={demo_project}")
    assert status == 403
    _, body, _ = await cloud.compute("GET", f"/limits?tenant_id={demo_project}", user="admin")
    assert body["limits"]["absolute"]["totalInstancesUsed"] == 1


async def test_cli_quota_and_limits(cloud, demo_project):
    shown = await cloud.openstack_json("quota", "show")
    assert {"Resource": "instances", "Limit": 10} in shown
    await cloud.openstack("quota", "set", "--instances", "5", "demo", cloud="novalite-admin")
    _, body, _ = await cloud.compute("GET", f"/os-quota-sets/{demo_project}")
    assert body["quota_set"]["instances"] == 5
    limits = await cloud.openstack_json("limits", "show", "--absolute")
    assert {"Name": "instances", "Value": 5} in limits  # the SDK renames maxTotalInstances
