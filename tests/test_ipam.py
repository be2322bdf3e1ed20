"""Address allocation: concurrent ports fill a small subnet exactly (distinct addresses, then
Neutron's 409), freed addresses come back once the cursor wraps, and an allocation reads as
many rows on a subnet with 5,000 used addresses as on one with 5."""

from __future__ import annotations

import asyncio

from novalite.api import keys
from novalite.db import networks as q

V2 = "/networking/v2.0"


async def post(cloud, resource: str, body: dict):
    status, doc, _ = await cloud.request("POST", f"{V2}/{resource}s", user="demo", json_body={resource: body})
    return status, doc


async def network(cloud, cidr: str) -> tuple[str, str]:
    status, net = await post(cloud, "network", {"name": "ipam"})
    assert status == 201, net
    status, sub = await post(cloud, "subnet", {"network_id": net["network"]["id"], "cidr": cidr, "ip_version": 4,
                                               "enable_dhcp": False})
    assert status == 201, sub
    return net["network"]["id"], sub["subnet"]["id"]


async def test_concurrent_ports_fill_a_small_subnet_exactly(cloud):
    net, _ = await network(cloud, "10.70.0.0/29")  # pool .2-.6: five addresses
    results = await asyncio.gather(*(post(cloud, "port", {"network_id": net}) for _ in range(8)))
    made = [doc["port"]["fixed_ips"][0]["ip_address"] for status, doc in results if status == 201]
    assert sorted(made) == [f"10.70.0.{i}" for i in range(2, 7)]
    refused = [doc for status, doc in results if status != 201]
    assert len(refused) == 3
    assert {(d["NeutronError"]["type"], d["NeutronError"]["message"]) for d in refused} == {
        ("IpAddressGenerationFailure", f"No more IP addresses available on network {net}.")}
    # a freed address is given out again once the cursor has passed the end of the pool
    port = next(doc["port"] for status, doc in results if status == 201
                and doc["port"]["fixed_ips"][0]["ip_address"] == "10.70.0.4")
    status, _, _ = await cloud.request("DELETE", f"{V2}/ports/{port['id']}", user="demo")
    assert status == 204
    status, doc = await post(cloud, "port", {"network_id": net})
    assert status == 201 and doc["port"]["fixed_ips"][0]["ip_address"] == "10.70.0.4"


async def rows_read_by_one_allocation(cloud, net: str) -> tuple[int, str]:
    """Rows of ports and subnets one allocation reads (sequential + index fetches), from the
    transaction's own statistics."""
    stats = """SELECT coalesce(sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)), 0)
               FROM pg_stat_xact_user_tables WHERE relname IN ('ports', 'subnets')"""
    async with cloud.app[keys.DB].acquire() as conn, conn.transaction():
        before = await conn.fetchval(stats)
        port = await q.create_port(conn, network_id=net, project_id="ipam")
        return await conn.fetchval(stats) - before, str(port["fixed_ip"])


async def fill(cloud, net: str, sub: str, n: int) -> None:
    """``n`` ports allocated as the API allocates them (cursor and all), in one statement."""
    await cloud.app[keys.DB].execute(
        """INSERT INTO ports (id, network_id, subnet_id, project_id, mac_address, fixed_ip)
           SELECT gen_random_uuid(), $1, $2, 'ipam', '02:' || md5(gen_random_uuid()::text), novalite_next_ip($2)
           FROM generate_series(1, $3)""",
        net, sub, n,
    )


async def test_an_allocation_costs_the_same_on_a_full_16_as_on_an_empty_24(cloud):
    small_net, small_sub = await network(cloud, "10.71.0.0/24")
    big_net, big_sub = await network(cloud, "10.80.0.0/16")
    await fill(cloud, small_net, small_sub, 5)
    await fill(cloud, big_net, big_sub, 5000)
    small = [await rows_read_by_one_allocation(cloud, small_net) for _ in range(3)]
    big = [await rows_read_by_one_allocation(cloud, big_net) for _ in range(3)]
    assert [r for r, _ in big] == [r for r, _ in small], (small, big)
    assert max(r for r, _ in big) < 20
    assert [a for _, a in small] == ["10.71.0.7", "10.71.0.8", "10.71.0.9"]
    assert [a for _, a in big] == ["10.80.19.138", "10.80.19.139", "10.80.19.140"]  # .0.2 + 5,000 on
    distinct = await cloud.app[keys.DB].fetchval(
        "SELECT count(DISTINCT fixed_ip) = count(*) FROM ports WHERE network_id = $1", big_net)
    assert distinct


async def counted_free(conn, sub: str) -> int:
    """The subnet's free pool addresses counted from its ports (what its kept count must equal)."""
    return await conn.fetchval(
        """SELECT sum((e->>'end')::inet - (e->>'start')::inet + 1
                      - (SELECT count(*) FROM ports p WHERE p.network_id = s.network_id
                           AND p.fixed_ip BETWEEN (e->>'start')::inet AND (e->>'end')::inet)
                      - CASE WHEN s.gateway_ip BETWEEN (e->>'start')::inet AND (e->>'end')::inet THEN 1 ELSE 0 END)
           FROM subnets s, jsonb_array_elements(s.allocation_pools) e WHERE s.id = $1::uuid""", sub)


async def test_the_free_address_count_reads_no_port_and_stays_exact(cloud):
    net, sub = await network(cloud, "10.81.0.0/16")
    await fill(cloud, net, sub, 5000)
    stats = """SELECT coalesce(sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)), 0)
               FROM pg_stat_xact_user_tables WHERE relname = 'ports'"""
    async with cloud.app[keys.DB].acquire() as conn, conn.transaction():
        before = await conn.fetchval(stats)
        free = await q.free_addresses(conn, sub)
        assert await conn.fetchval(stats) == before  # what every create asks reads no port
        assert free == 65534 - 1 - 5000 == await counted_free(conn, sub)  # .1 is the gateway

    # ports made, moved to another address, deleted, and the pools changed under them
    status, doc = await post(cloud, "port", {"network_id": net, "fixed_ips": [{"ip_address": "10.81.200.9"}]})
    assert status == 201, doc
    port = doc["port"]["id"]
    status, doc, _ = await cloud.request("PUT", f"{V2}/ports/{port}", user="demo", json_body={
        "port": {"fixed_ips": [{"subnet_id": sub, "ip_address": "10.81.201.9"}]}})
    assert status == 200, doc
    async with cloud.app[keys.DB].acquire() as conn:
        assert await q.free_addresses(conn, sub) == free - 1 == await counted_free(conn, sub)
    status, doc, _ = await cloud.request("PUT", f"{V2}/subnets/{sub}", user="demo", json_body={
        "subnet": {"allocation_pools": [{"start": "10.81.201.0", "end": "10.81.201.99"}]}})
    assert status == 200, doc
    async with cloud.app[keys.DB].acquire() as conn:
        assert await q.free_addresses(conn, sub) == 99 == await counted_free(conn, sub)  # .201.9 is held
    status, _, _ = await cloud.request("DELETE", f"{V2}/ports/{port}", user="demo")
    assert status == 204
    async with cloud.app[keys.DB].acquire() as conn:
        assert await q.free_addresses(conn, sub) == 100 == await counted_free(conn, sub)


async def test_a_batch_of_server_ports_answers_each_port_and_makes_none_for_those_refused(cloud):
    net, sub = await network(cloud, "10.82.0.0/29")  # pool .2-.6: five addresses
    status, doc = await post(cloud, "port", {"network_id": net})  # one taken, four left
    assert status == 201, doc
    devices = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(7)]
    wanted = [q.NovaPort(net, "ipam-a", d, "compute:nova", None, 0, -1) for d in devices[:6]]
    wanted.insert(2, q.NovaPort(net, "ipam-b", devices[6], "compute:nova", None, 0, 0))  # port quota 0
    async with cloud.app[keys.DB].acquire() as conn:
        out = await q.create_nova_ports(conn, wanted)
        assert type(out[2]) is q.PortQuotaExceeded
        made = [o for o in out if isinstance(o, dict)]
        assert sorted(o["fixed_ip"] for o in made) == [f"10.82.0.{i}" for i in range(3, 7)]
        assert sum(isinstance(o, q.NoMoreAddresses) for o in out) == 2  # six asked for four addresses
        held = await conn.fetch("SELECT device_id FROM ports WHERE network_id = $1::uuid AND device_id <> ''", net)
        got = [w.device_id for w, o in zip(wanted, out, strict=True) if isinstance(o, dict)]
        assert sorted(r["device_id"] for r in held) == sorted(got)  # nothing of the refused ones
        assert await q.free_addresses(conn, sub) == 0 == await counted_free(conn, sub)


async def test_a_port_delete_takes_its_projects_counter_before_its_subnet(cloud):
    """A port create holds its project's port counter (its quota check), then counts the port into
    its subnet; a delete takes the two in the same order, so a create and a delete on one network
    never each hold what the other waits for (they deadlocked while servers booted and went)."""
    net, sub = await network(cloud, "10.82.0.0/24")
    status, doc = await post(cloud, "port", {"network_id": net})
    assert status == 201, doc
    port, project = doc["port"]["id"], doc["port"]["project_id"]
    pool = cloud.app[keys.DB]
    async with pool.acquire() as create, pool.acquire() as delete:
        held = create.transaction()
        await held.start()
        await create.execute("SELECT 1 FROM network_usage WHERE project_id = $1 FOR UPDATE", project)
        deleting = asyncio.create_task(delete.execute("DELETE FROM ports WHERE id = $1::uuid", port))
        await asyncio.sleep(0.3)
        assert not deleting.done()  # waiting for the project's counter, holding no subnet
        # what the create's insert does next: with the old order this waited for the delete (deadlock)
        await asyncio.wait_for(create.execute("UPDATE subnets SET pool_used = pool_used WHERE id = $1::uuid", sub), 5)
        await held.commit()
        assert await asyncio.wait_for(deleting, 5) == "DELETE 1"
    async with pool.acquire() as conn:
        assert await q.free_addresses(conn, sub) == 253 == await counted_free(conn, sub)  # .2-.254, the port gone


async def test_a_batch_returns_a_retried_builds_port_untouched_beside_new_ones(cloud):
    """A build retried on its host asks for its port again: the batch gives it back as it is
    (``existed``) and makes the others' ports, each on its own address."""
    net, _ = await network(cloud, "10.83.0.0/24")
    devices = [f"00000000-0000-4000-8000-00000000010{i}" for i in range(3)]
    wanted = [q.NovaPort(net, "ipam-c", d, "compute:nova", None, 0, -1) for d in devices]
    async with cloud.app[keys.DB].acquire() as conn:
        (first,) = await q.create_nova_ports(conn, wanted[:1])
        again, *others = await q.create_nova_ports(conn, wanted)
        assert again["existed"] and (again["id"], again["fixed_ip"], again["mac_address"]) == (
            first["id"], first["fixed_ip"], first["mac_address"])
        assert [o["existed"] for o in others] == [False, False]
        addresses = {first["fixed_ip"], *(o["fixed_ip"] for o in others)}
        macs = {first["mac_address"], *(o["mac_address"] for o in others)}
        assert len(addresses) == 3 == len(macs)
        assert await conn.fetchval("SELECT count(*) FROM ports WHERE network_id = $1::uuid AND device_id <> ''",
                                   net) == 3


async def test_a_batch_draws_another_mac_when_its_first_is_taken(cloud):
    """A port's random MAC may be taken already: the batch draws another for that port (the draw is
    made repeatable here with Postgres' setseed, so the first one is known and taken beforehand)."""
    net, _ = await network(cloud, "10.84.0.0/24")
    draw = "SELECT 'fa:16:3e:' || regexp_replace(substr(md5(random()::text), 1, 6), '(..)(..)(..)', '\\1:\\2:\\3')"
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute("SELECT setseed(0.25)")
        taken = await conn.fetchval(draw)
    status, doc = await post(cloud, "port", {"network_id": net, "mac_address": taken})
    assert status == 201, doc
    wanted = [q.NovaPort(net, "ipam-d", "00000000-0000-4000-8000-000000000200", "compute:nova", None, 0, -1)]
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute("SELECT setseed(0.25)")
        (made,) = await q.create_nova_ports(conn, wanted)
    assert isinstance(made, dict) and not made["existed"] and made["mac_address"] != taken
    assert made["mac_address"].startswith("fa:16:3e:")
