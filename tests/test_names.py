"""One name rule for every service (Nova's printable rule, each service's length limit),
and user-written text that reaches domain XML or a log line stays inert there."""

from __future__ import annotations

from novalite.api import keys
from novalite.api import validation as shared
from novalite.logs import escape_controls
from novalite.virt.libvirt.config import LibvirtConfigGuest
from tests.conftest import add_image, wait_for_status

ZWSP = "a\u200bb"


def test_printable_is_novas_definition():
    assert shared.valid_name("web 01 ünï €")
    assert shared.valid_name("a\u00a0b")  # a no-break space is Zs: allowed inside
    for bad in ("a\u200bb", "a\u202eb", "a\nb", "a\x7fb", "a\u2028b", " a", "a ", "\u00a0a", "a\U0001f600"):
        assert not shared.valid_name(bad), repr(bad)
    assert shared.name_problem("x" * 65, max_length=64)
    assert shared.name_problem(ZWSP).startswith("An invalid 'name' value was provided")
    assert shared.name_problem(3) == "3 is not of type 'string'"


def _message(body: dict) -> str:
    """The message of any service's error body."""
    if "error" in body:  # Keystone
        return body["error"]["message"]
    if "code" in body:  # Glance
        return body["message"]
    (fault,) = body.values()  # Nova and Cinder
    return fault["message"]


async def test_a_zero_width_space_in_a_name_is_400_in_every_service(cloud):
    image = await add_image(cloud)
    status, body, _ = await cloud.request("GET", "/identity/v3/projects?name=admin", user="admin")
    project = body["projects"][0]["id"]
    attempts = [
        ("POST", "/compute/v2.1/servers",
         {"server": {"name": ZWSP, "imageRef": image, "flavorRef": "1", "networks": "none"}}, "badRequest"),
        ("POST", "/compute/v2.1/flavors", {"flavor": {"name": ZWSP, "ram": 64, "vcpus": 1, "disk": 1}},
         "badRequest"),
        ("POST", "/compute/v2.1/os-keypairs", {"keypair": {"name": ZWSP}}, "badRequest"),
        ("POST", "/compute/v2.1/os-server-groups", {"server_group": {"name": ZWSP, "policies": ["affinity"]}},
         "badRequest"),
        ("POST", "/image/v2/images", {"name": ZWSP, "disk_format": "qcow2", "container_format": "bare"}, "code"),
        ("POST", f"/volume/v3/{project}/volumes", {"volume": {"size": 1, "name": ZWSP}}, "badRequest"),
        ("POST", "/identity/v3/projects", {"project": {"name": ZWSP}}, "error"),
        ("POST", "/identity/v3/users", {"user": {"name": ZWSP, "password": "pw"}}, "error"),
    ]
    for method, path, body, key in attempts:
        status, answer, _ = await cloud.request(method, path, user="admin", json_body=body, version="2.latest")
        assert status == 400, (path, answer)
        assert key in answer, (path, answer)
        assert "name" in _message(answer), (path, answer)


async def test_renames_follow_the_same_rule(cloud):
    image = await add_image(cloud)
    status, body, _ = await cloud.compute("POST", "/servers", version="2.latest", json_body={
        "server": {"name": "vm", "imageRef": image, "flavorRef": "1", "networks": "none"}})
    sid = body["server"]["id"]
    status, body, _ = await cloud.compute("PUT", f"/servers/{sid}", json_body={"server": {"name": "vm\u202e"}})
    assert status == 400 and "invalid 'name'" in body["badRequest"]["message"]
    status, body, _ = await cloud.request(
        "PATCH", f"/image/v2/images/{image}", user="admin", json_body=[
            {"op": "replace", "path": "/name", "value": " lead"}],
        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})
    assert status == 400 and body["code"] == 400
    status, body, _ = await cloud.request("GET", "/identity/v3/projects?name=demo", user="admin")
    demo = body["projects"][0]["id"]
    status, body, _ = await cloud.request("PATCH", f"/identity/v3/projects/{demo}", user="admin",
                                          json_body={"project": {"name": "x" * 65}})
    assert status == 400 and "too long" in body["error"]["message"]


async def test_hostnames_follow_novas_patterns(cloud):
    image = await add_image(cloud)
    base = {"name": "vm", "imageRef": image, "flavorRef": "1", "networks": "none"}
    for version, hostname in (("2.90", "my_host"), ("2.90", "a" * 64), ("2.94", "bad host"), ("2.94", "<x>")):
        status, body, _ = await cloud.compute("POST", "/servers", version=version,
                                              json_body={"server": {**base, "hostname": hostname}})
        assert status == 400, (version, hostname, body)
    status, body, _ = await cloud.compute("POST", "/servers", version="2.94",
                                          json_body={"server": {**base, "hostname": "web-1.example.org"}})
    assert status == 202, body


async def test_a_server_named_with_xml_metacharacters_boots_and_its_domain_xml_round_trips(cloud):
    image = await add_image(cloud)
    name = "<b>&\"'x]]><!-- -->"
    status, body, _ = await cloud.compute("POST", "/servers", version="2.latest", user="admin", json_body={
        "server": {"name": name, "imageRef": image, "flavorRef": "1", "networks": "none"}})
    assert status == 202, body
    server = await wait_for_status(cloud, body["server"]["id"], "ACTIVE", user="admin")
    assert server["name"] == name
    host = server["OS-EXT-SRV-ATTR:host"]
    xml = await cloud.app[keys.COMPUTES][host].driver.domain_xml(server["id"])
    assert "]]>" not in xml and "<b>" not in xml and "<!-- -->" not in xml
    guest = LibvirtConfigGuest.from_xml(xml)
    assert guest.metadata[0].name == name
    assert LibvirtConfigGuest.from_xml(guest.to_xml()).metadata[0].name == name


def test_console_log_lines_escape_control_characters():
    event = {"event": "server_renamed", "name": "x\nERROR forged line", "path": "/a\x1b[31mred",
             "exception": "Traceback\n  line"}
    out = escape_controls(None, "info", event)
    assert out["name"] == "x\\nERROR forged line"
    assert out["path"] == "/a\\x1b[31mred"
    assert out["exception"] == "Traceback\n  line"  # a traceback stays multi-line
