"""The metadata service's answers, asked over 127.0.0.x as a guest would ask 169.254.169.254.

The cloud's network is 127.0.77.0/24 on simulated hosts, so the server's fixed IP is a local
address a test can send from (aiohttp's ``local_addr``); a listener of the metadata service
bound to 127.0.0.1 serves that network, as the gateway listener serves a real one. Nothing is
faked: the instance, its port and its documents come from the same DB the API wrote.
"""

from __future__ import annotations

import base64
import json

import aiohttp
import pytest
from conftest import add_image, start_cloud, stop_cloud, wait_for_status

from novalite.api import keys

NETWORK = """
[networking]
default_network = "meta"

[[networks]]
name = "meta"
cidr = "127.0.77.0/24"

[[networks]]
name = "other"
cidr = "127.0.78.0/24"
"""


@pytest.fixture
async def meta_cloud(pg_dsn, tmp_path):
    cloud = await start_cloud(pg_dsn, tmp_path, extra=NETWORK)
    yield cloud
    await stop_cloud(cloud)


async def network_id(cloud, name: str) -> str:
    status, body, _ = await cloud.request("GET", f"/networking/v2.0/networks?name={name}", user="admin")
    assert status == 200, body
    return body["networks"][0]["id"]


async def boot(cloud) -> tuple[dict, str]:
    """A server with a keypair, metadata, user_data and a personality file; its fixed IP."""
    status, kp, _ = await cloud.compute("POST", "/os-keypairs", json_body={"keypair": {"name": "k1"}})
    assert status == 200, kp
    image = await add_image(cloud)
    status, body, _ = await cloud.compute("POST", "/servers", version="2.56", json_body={"server": {
        "name": "meta-vm", "imageRef": image, "flavorRef": "1", "key_name": "k1", "networks": "auto",
        "metadata": {"role": "web"},
        "user_data": base64.b64encode(b"hello metadata").decode(),
        "personality": [{"path": "/etc/motd", "contents": base64.b64encode(b"motd!").decode()}],
    }})
    assert status == 202, body
    server = await wait_for_status(cloud, body["server"]["id"], "ACTIVE")
    return {**server, "public_key": kp["keypair"]["public_key"]}, server["addresses"]["meta"][0]["addr"]


class Guest:
    """Requests to a metadata listener from one source address."""

    def __init__(self, port: int, source: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0)))

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.base + path) as r:
            return r.status, await r.text()

    async def post(self, path: str, data: bytes) -> tuple[int, str]:
        async with self.session.post(self.base + path, data=data) as r:
            return r.status, await r.text()

    async def close(self) -> None:
        await self.session.close()


async def listener(cloud, network: str) -> int:
    return await cloud.app[keys.METADATA].listen(await network_id(cloud, network), "127.0.0.1", 0)


async def test_metadata_service_serves_the_config_drive_documents(meta_cloud):
    cloud = meta_cloud
    server, ip = await boot(cloud)
    guest = Guest(await listener(cloud, "meta"), ip)
    try:
        status, text = await guest.get("/openstack/latest/meta_data.json")
        assert status == 200, text
        meta = json.loads(text)
        assert meta["uuid"] == server["id"] and meta["name"] == "meta-vm" and meta["hostname"] == "meta-vm"
        assert meta["public_keys"] == {"k1": server["public_key"]}
        assert meta["meta"] == {"role": "web"}
        assert meta["files"] == [{"path": "/etc/motd", "content_path": "/content/0000"}]
        assert "admin_pass" not in meta  # only the config drive carries it
        assert await guest.get("/openstack/latest/user_data") == (200, "hello metadata")
        assert await guest.get("/openstack/content/0000") == (200, "motd!")
        status, text = await guest.get("/openstack/2018-08-27/network_data.json")
        links = json.loads(text)["links"]
        assert status == 200 and [link["ethernet_mac_address"] for link in links] == [
            server["addresses"]["meta"][0]["OS-EXT-IPS-MAC:mac_addr"]]
        assert await guest.get("/openstack/latest/vendor_data2.json") == (200, "{}")
        status, text = await guest.get("/openstack")
        assert status == 200 and {"2012-08-10", "2018-08-27", "latest"} <= set(text.split("\n"))
        status, text = await guest.get("/openstack/latest/")
        assert set(text.split("\n")) == {"meta_data.json", "network_data.json", "vendor_data.json",
                                         "vendor_data2.json", "user_data", "password"}
        assert (await guest.get("/openstack/1999-01-01/meta_data.json"))[0] == 404

        # EC2's tree, the same facts
        status, text = await guest.get("/latest/meta-data/")
        assert status == 200 and {"instance-id", "hostname", "local-ipv4", "public-keys/",
                                  "placement/"} <= set(text.split("\n"))
        assert await guest.get("/latest/meta-data/hostname") == (200, "meta-vm")
        assert await guest.get("/latest/meta-data/local-ipv4") == (200, ip)
        assert await guest.get("/latest/meta-data/placement/availability-zone") == (200, "nova")
        assert await guest.get("/latest/meta-data/public-keys/") == (200, "0=k1")
        assert await guest.get("/2009-04-04/meta-data/public-keys/0/openssh-key") == (200, server["public_key"])
        assert await guest.get("/latest/user-data") == (200, "hello metadata")
        assert (await guest.get("/latest/meta-data/no-such-key"))[0] == 404
    finally:
        await guest.close()


async def test_password_is_posted_once(meta_cloud):
    cloud = meta_cloud
    _, ip = await boot(cloud)
    guest = Guest(await listener(cloud, "meta"), ip)
    try:
        assert await guest.get("/openstack/latest/password") == (200, "")
        assert (await guest.post("/openstack/latest/password", b"encrypted-secret"))[0] == 200
        assert await guest.get("/openstack/latest/password") == (200, "encrypted-secret")
        assert (await guest.post("/openstack/latest/password", b"another"))[0] == 409
        assert (await guest.post("/openstack/latest/password", b"x" * 300))[0] == 400
        assert await guest.get("/openstack/latest/password") == (200, "encrypted-secret")
    finally:
        await guest.close()


async def test_unknown_source_or_wrong_network_gets_404(meta_cloud):
    cloud = meta_cloud
    _, ip = await boot(cloud)
    stranger = Guest(await listener(cloud, "meta"), "127.0.77.250")
    elsewhere = Guest(await listener(cloud, "other"), ip)  # the right address on another network
    try:
        assert (await stranger.get("/openstack/latest/meta_data.json"))[0] == 404
        assert (await stranger.get("/latest/meta-data/instance-id"))[0] == 404
        assert (await elsewhere.get("/openstack/latest/meta_data.json"))[0] == 404
    finally:
        await stranger.close()
        await elsewhere.close()


def test_a_stale_redirect_on_a_reused_bridge_gives_way_to_the_networks_own():
    """libvirt reuses the name of a bridge that is gone; a metadata rule a vanished network left
    on it (any cloud's) would catch the new network's guests first, so ensuring removes it."""
    import subprocess
    import uuid as uuidlib

    from novalite.virt.libvirt import metadata

    tag = "nlmd" + uuidlib.uuid4().hex[:6]
    bridge = tag + "br"  # no such interface: iptables keeps rules for any name
    try:
        metadata.ensure_redirect(f"{tag}-gone", bridge, "10.251.1.1", 8775)
        metadata.ensure_redirect(f"{tag}-new", bridge, "10.251.2.1", 8775)
        rules = [r for r in subprocess.run(["iptables", "-w", "-t", "nat", "-S", "PREROUTING"], check=True,
                                           capture_output=True, text=True).stdout.splitlines() if bridge in r]
        assert len(rules) == 1 and f"{tag}-new metadata" in rules[0] and "10.251.2.1:8775" in rules[0]
    finally:
        metadata.prune_redirects(tag, set())
