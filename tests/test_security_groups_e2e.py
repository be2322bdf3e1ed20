"""Security groups enforced on real TCG guests, proven from inside the guests.

Three test guests booted through the API on one tenant network made through the
Neutron API (10.99.0.0/24). Their "#!" user_data scripts act and print on their
consoles, which the test reads through ``os-getConsoleOutput``:

- B (group ``web``) serves ``hello-from-b`` on tcp 8080 (:func:`listener_script`);
- A (group ``default``) connects to B every second and prints
  ``probe tcp <seq> ok|fail`` (:func:`prober_script`);
- C (group ``default``) does the same, and in every round also tries from an
  address that is not its own (``probe ip``) and from a MAC that is not its own
  (``probe mac``).

Steps: A is blocked by default (B's group admits only its own members); a rule on
``web`` admitting tcp 8080 from ``default`` lets A through within 5 s, without a
reboot; deleting it blocks A again; a rule admitting the whole subnet lets C's
own probes through while its spoofed ones stay blocked; with port security off
on C's port the spoofed probes pass (so the test can tell the difference).
No traffic goes between the host and a guest: only guest to guest on the
tenant network's bridge.

Run it (it needs the networks, ports and security-group work of issue 16)::

    .venv/bin/python -m pytest tests/test_security_groups_e2e.py -q -m qemu

on a machine with libvirtd (qemu:///system) and the test image's Debian packages.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import libvirt
import pytest
from conftest import wait_for_status
from test_guest_e2e import console, qemu_cloud, test_image  # noqa: F401  (test_image is a fixture)
from test_guest_userdata import boot_with_script

pytestmark = pytest.mark.qemu

NEUTRON = "/networking/v2.0"
PORT = 8080
REPLY = "hello-from-b"
SPOOF_IP = "10.99.0.250"  # inside the subnet, outside what DHCP gave anyone
SPOOF_MAC = "fa:16:3e:5a:5a:5a"


def listener_script(port: int = PORT, reply: str = REPLY) -> str:
    """A guest script serving ``reply`` to every tcp connection on ``port``, printing ``served`` for each."""
    return f"""#!/bin/sh
printf '#!/bin/sh\\necho {reply}\\necho served >&2\\n' > /tmp/reply
chmod 700 /tmp/reply
echo "listening port={port}"
nc -ll -p {port} -e /tmp/reply
echo "listener ended rc=$?"
"""


def prober_script(target: str, port: int = PORT, expect: str = REPLY, *, spoof_ip: str | None = None,
                  spoof_mac: str | None = None) -> str:
    """A guest script connecting to ``target:port`` about every second, forever.

    Each round prints ``probe tcp <seq> ok|fail t=<uptime>`` (ok: ``expect`` came back).
    With ``spoof_ip`` it also tries from that address (a second address on eth0, chosen
    for the target by a host route) and prints ``probe ip ...``; with ``spoof_mac`` it
    also tries with eth0's MAC changed (announced by gratuitous ARP, then restored) and
    prints ``probe mac ...``. Without anti-spoofing in the datapath both would pass."""
    spoof_setup = f"ip addr add {spoof_ip}/32 dev eth0\n" if spoof_ip else ""
    spoof_ip_round = f"""  ip route replace {target}/32 dev eth0 src {spoof_ip}
  say ip "$(probe)"
  ip route del {target}/32 dev eth0
""" if spoof_ip else ""
    spoof_mac_round = f"""  if ip link set dev eth0 address {spoof_mac}; then
    announce
    say mac "$(probe)"
    ip link set dev eth0 address "$mac"
    announce
  else
    say mac error
  fi
""" if spoof_mac else ""
    return f"""#!/bin/sh
mac=$(cat /sys/class/net/eth0/address)
own=$(ip -4 -o addr show dev eth0 | head -n1 | sed 's/.* inet \\([0-9.]*\\).*/\\1/')
{spoof_setup}probe() {{
  if timeout 3 nc -w 1 {target} {port} </dev/null 2>/dev/null | grep -q '{expect}'; then echo ok; else echo fail; fi
}}
# the neighbours learn which MAC has our address now (what a spoofer would do)
announce() {{ arping -U -c 1 -w 1 -I eth0 -s "$own" "$own" >/dev/null 2>&1; }}
say() {{ echo "probe $1 $n $2 t=$(cut -d' ' -f1 /proc/uptime)"; }}
n=0
while true; do
  n=$((n + 1))
  say tcp "$(probe)"
{spoof_ip_round}{spoof_mac_round}  sleep 1
done
"""


@dataclass(frozen=True)
class Probe:
    """One ``probe <kind> <seq> ok|fail`` line of a prober's console."""

    kind: str
    seq: int
    ok: bool


PROBE_LINE = re.compile(r"^NOVALITE-GUEST: script: probe (\w+) (\d+) (ok|fail|error)", re.M)


def probes(console_text: str, kind: str = "tcp") -> list[Probe]:
    """The prober's results of one kind, in order."""
    return [Probe(m[1], int(m[2]), m[3] == "ok") for m in PROBE_LINE.finditer(console_text) if m[1] == kind]


async def wait_probes(cloud, server_id: str, done: Callable[[str], object], what: str, timeout: float) -> object:
    """Poll the guest's console through the API until ``done(text)`` is truthy; return that value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        text = await console(cloud, server_id)
        found = done(text)
        if found:
            return found
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout}s; console:\n{text[-3000:]}")
        await asyncio.sleep(0.25)


def last_seq(text: str, kind: str = "tcp") -> int:
    seen = probes(text, kind)
    return seen[-1].seq if seen else 0


def after(text: str, seq: int, kind: str = "tcp") -> list[Probe]:
    """The probes of one kind that started after round ``seq``."""
    return [p for p in probes(text, kind) if p.seq > seq]


def rounds(text: str, seq: int) -> dict[int, dict[str, bool]]:
    """Complete rounds after ``seq`` of a spoofing prober: {seq: {"tcp"|"ip"|"mac": ok}}."""
    by_seq: dict[int, dict[str, bool]] = {}
    for m in PROBE_LINE.finditer(text):
        if int(m[2]) > seq:
            by_seq.setdefault(int(m[2]), {})[m[1]] = m[3] == "ok"
    return {s: r for s, r in by_seq.items() if len(r) == 3}


# --------------------------------------------------------------------------- the cloud's side


async def neutron(cloud, method: str, path: str, body: dict | None = None, expect: int = 200) -> dict | None:
    status, answer, _ = await cloud.request(method, NEUTRON + path, json_body=body)
    assert status == expect, (method, path, status, answer)
    return answer


async def server_port(cloud, server_id: str) -> dict:
    """The server's port as the ports API shows it, once it has its fixed IP."""
    for _ in range(120):
        ports = (await neutron(cloud, "GET", f"/ports?device_id={server_id}"))["ports"]
        if ports and ports[0]["fixed_ips"]:
            return ports[0]
        await asyncio.sleep(0.5)
    raise AssertionError(f"server {server_id} has no port with a fixed IP")


def remove_leftovers(prefix: str) -> None:
    """What a failed run may leave behind with this cloud's prefix: port filters, DHCP namespaces."""
    conn = libvirt.open("qemu:///system")
    try:
        for name in conn.listNWFilters():
            if name.startswith(prefix):
                try:
                    conn.nwfilterLookupByName(name).undefine()
                except libvirt.libvirtError:
                    pass  # still referenced: the other filter goes first, the next sweep takes it
    finally:
        conn.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    for ns in (line.split()[0] for line in listed.splitlines() if line.startswith(prefix)):
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout
        for pid in pids.split():
            subprocess.run(["kill", pid], check=False)
        subprocess.run(["ip", "netns", "delete", ns], check=False)


@pytest.fixture
async def sg_cloud(pg_dsn, test_image):  # noqa: F811
    async with qemu_cloud(pg_dsn, test_image, "nlsg") as cloud:
        prefix = cloud.config.networking.libvirt_prefix
        try:
            yield cloud
        finally:
            status, body, _ = await cloud.compute("GET", "/servers")
            for server in body["servers"] if status == 200 else []:
                await cloud.compute("DELETE", f"/servers/{server['id']}")
                await wait_for_status(cloud, server["id"], "DELETED", timeout=60)
    for _ in range(2):  # filters reference each other only through clean-traffic: two sweeps at most
        await asyncio.to_thread(remove_leftovers, prefix)


async def tenant_network(cloud) -> str:
    """A project network with subnet 10.99.0.0/24 made through the Neutron API; its id."""
    net = (await neutron(cloud, "POST", "/networks", {"network": {"name": "sg-e2e"}}, 201))["network"]
    await neutron(cloud, "POST", "/subnets", {"subnet": {
        "network_id": net["id"], "cidr": "10.99.0.0/24", "ip_version": 4, "name": "sg-e2e"}}, 201)
    return net["id"]


async def add_rule(cloud, group_id: str, **remote) -> str:
    """An ingress tcp 8080 rule on the group (``remote_group_id=`` or ``remote_ip_prefix=``); its id."""
    body = {"security_group_rule": {"security_group_id": group_id, "direction": "ingress", "ethertype": "IPv4",
                                    "protocol": "tcp", "port_range_min": PORT, "port_range_max": PORT, **remote}}
    return (await neutron(cloud, "POST", "/security-group-rules", body, 201))["security_group_rule"]["id"]


# --------------------------------------------------------------------------- the proof


async def test_security_group_rules_open_and_close_tcp_between_guests_and_spoofing_gets_nothing_through(sg_cloud):
    cloud = sg_cloud
    loop = asyncio.get_running_loop()
    net_id = await tenant_network(cloud)
    web = (await neutron(cloud, "POST", "/security-groups", {"security_group": {"name": "web"}}, 201))
    web_id = web["security_group"]["id"]
    on_net = {"networks": [{"uuid": net_id}]}

    # B first: the probers need its address, which the ports API shows as soon as Nova made its port.
    b_id = await boot_with_script(cloud, "sg-b", listener_script(), security_groups=[{"name": "web"}], **on_net)
    b_ip = (await server_port(cloud, b_id))["fixed_ips"][0]["ip_address"]
    assert b_ip.startswith("10.99.0.")
    a_id, c_id = await asyncio.gather(
        boot_with_script(cloud, "sg-a", prober_script(b_ip), **on_net),
        boot_with_script(cloud, "sg-c", prober_script(b_ip, spoof_ip=SPOOF_IP, spoof_mac=SPOOF_MAC), **on_net))
    a_port, c_port = await server_port(cloud, a_id), await server_port(cloud, c_id)
    (default_id,) = a_port["security_groups"]
    assert c_port["security_groups"] == [default_id] and default_id != web_id

    # 1. B listens, and A's probes fail: "web" admits nothing from another group.
    await wait_probes(cloud, b_id, lambda t: f"script: listening port={PORT}" in t, "B listening", 120)
    start = last_seq(await console(cloud, a_id))
    blocked = await wait_probes(cloud, a_id, lambda t: len(after(t, start)) >= 3 and after(t, start), "3 probes", 60)
    assert not any(p.ok for p in blocked), blocked

    # 2. A rule admitting tcp 8080 from A's group: A gets through within 5 s, nobody rebooted.
    seq = last_seq(await console(cloud, a_id))
    began = loop.time()
    rule = await add_rule(cloud, web_id, remote_group_id=default_id)
    await wait_probes(cloud, a_id, lambda t: any(p.ok for p in after(t, seq)), "A's probe ok", 30)
    assert loop.time() - began <= 5.0, f"the rule took {loop.time() - began:.1f}s to let A through"
    assert "script: served" in await console(cloud, b_id)

    # 3. The rule deleted: A is blocked again (the round in flight may still pass).
    await neutron(cloud, "DELETE", f"/security-group-rules/{rule}", expect=204)
    seq = last_seq(await console(cloud, a_id)) + 1
    closed = await wait_probes(cloud, a_id, lambda t: len(after(t, seq)) >= 3 and after(t, seq), "3 probes", 30)
    assert not any(p.ok for p in closed), closed

    # 4. The whole subnet admitted: C's own probes pass, from another IP or MAC nothing does.
    seq = last_seq(await console(cloud, c_id))
    await add_rule(cloud, web_id, remote_ip_prefix="10.99.0.0/24")
    first_ok = (await wait_probes(
        cloud, c_id, lambda t: next((p for p in after(t, seq) if p.ok), None), "C's probe ok", 30)).seq
    done = await wait_probes(cloud, c_id, lambda t: len(rounds(t, first_ok)) >= 3 and rounds(t, first_ok),
                             "3 rounds of C", 60)
    assert all(r == {"tcp": True, "ip": False, "mac": False} for r in done.values()), done

    # 5. Control: without port security on C's port the same spoofed probes pass.
    await neutron(cloud, "PUT", f"/ports/{c_port['id']}",
                  {"port": {"port_security_enabled": False, "security_groups": []}})
    seq = last_seq(await console(cloud, c_id)) + 1
    await wait_probes(cloud, c_id, lambda t: any(r["ip"] and r["mac"] for r in rounds(t, seq).values()),
                      "C's spoofed probes passing without port security", 60)

    for server_id in (a_id, b_id, c_id):
        await cloud.compute("DELETE", f"/servers/{server_id}")
    for server_id in (a_id, b_id, c_id):
        await wait_for_status(cloud, server_id, "DELETED", timeout=60)
    await neutron(cloud, "DELETE", f"/networks/{net_id}", expect=204)
    await neutron(cloud, "DELETE", f"/security-groups/{web_id}", expect=204)
