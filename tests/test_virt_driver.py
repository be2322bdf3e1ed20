"""The libvirt driver and its designer, against real libvirt (test driver; qemu where noted)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import libvirt
import pytest
import pytest_asyncio
from lxml import etree

import novalite
from novalite.virt import (
    DiskSpec,
    GuestSpec,
    HypervisorUnavailable,
    InstanceExists,
    NetworkSpec,
    NicSpec,
    StoragePoolSpec,
    VirtDriver,
    VirtError,
)
from novalite.virt import driver as virt
from novalite.virt.libvirt.config import LibvirtConfigGuest
from novalite.virt.libvirt.driver import LibvirtDriver, design_guest
from novalite.virt.testnode import read_test_node_name, write_test_node

DOMAIN_RNG = Path("/usr/share/libvirt/schemas/domain.rng")


def make_spec(virt_type: str = "qemu", **overrides: object) -> GuestSpec:
    instance_uuid = str(uuid.uuid4())
    fields: dict[str, object] = dict(
        instance_uuid=instance_uuid,
        name=f"instance-{instance_uuid[:8]}",
        memory_mb=512,
        vcpus=2,
        virt_type=virt_type,
        disks=[
            DiskSpec(path=f"/var/lib/novalite/instances/{instance_uuid}/disk"),
            DiskSpec(path=f"/var/lib/novalite/instances/{instance_uuid}/disk.config",
                     device="cdrom", bus="sata", target_dev="sda", driver_type="raw"),
        ],
        nics=[NicSpec(mac="fa:16:3e:11:22:33", network="default"),
              NicSpec(mac="fa:16:3e:11:22:34", network=None)],
        console_log_path=f"/var/lib/novalite/instances/{instance_uuid}/console.log",
        metadata={
            "display_name": "web-1", "flavor_name": "m1.small", "memory_mb": 512,
            "vcpus": 2, "root_gb": 1, "project_id": "proj-1", "user_id": "user-1",
            "creation_time": "2024-05-01 12:00:00",
        },
    )
    fields.update(overrides)
    return GuestSpec(**fields)  # type: ignore[arg-type]


@pytest.fixture
def node_uri(tmp_path: Path) -> str:
    return write_test_node(tmp_path / "sim1.xml", "sim1", vcpus=16, memory_mb=32768)


@pytest_asyncio.fixture
async def drv(node_uri: str) -> AsyncIterator[LibvirtDriver]:
    driver = LibvirtDriver(node_uri, "qemu")
    yield driver
    await driver.close()


# ------------------------------------------------------------------ testnode

def test_test_node_reports_given_host(tmp_path: Path) -> None:
    uri = write_test_node(tmp_path, "sim7", vcpus=12, memory_mb=24576)
    assert uri == f"test://{tmp_path.resolve()}/sim7.xml"
    conn = libvirt.open(uri)
    try:
        model, memory_mb, cpus, _mhz, nodes, sockets, cores, threads = conn.getInfo()
        assert (cpus, memory_mb) == (12, 24576)
        assert nodes * sockets * cores * threads == 12
        assert conn.listAllDomains(0) == []
    finally:
        conn.close()
    assert read_test_node_name(uri) == "sim7"
    assert read_test_node_name("test:///default") is None


# ------------------------------------------------------------------ designer

def test_design_test_domain() -> None:
    spec = make_spec("qemu")
    guest = design_guest(spec, "test")
    assert guest.virt_type == "test"
    assert guest.os_arch is None and guest.features == [] and guest.clock_offset is None
    assert guest.memory == 512 * 1024 and guest.vcpus == 2
    assert guest.os_boot_dev == ["hd"]
    disks = [d for d in guest.devices if type(d).__name__ == "LibvirtConfigGuestDisk"]
    assert [d.driver_name for d in disks] == [None, None]
    assert [d.driver_format for d in disks] == ["qcow2", "raw"]
    nics = [d for d in guest.devices if type(d).__name__ == "LibvirtConfigGuestInterface"]
    assert [(n.net_type, n.source_network) for n in nics] == [("network", "default"),
                                                              ("user", None)]
    meta = guest.metadata[0]
    assert (meta.uuid, meta.name, meta.flavor_name) == (spec.instance_uuid, "web-1", "m1.small")
    assert (meta.flavor_memory_mb, meta.flavor_vcpus, meta.flavor_disk_gb) == (512, 2, 1)
    assert (meta.owner_project_id, meta.owner_user_id) == ("proj-1", "user-1")


def test_design_qemu_domain() -> None:
    spec = make_spec("qemu", kernel="/k/vmlinuz", ramdisk="/k/initrd",
                     cmdline="console=ttyS0")
    root = design_guest(spec, "qemu", arch="x86_64").format_dom()
    assert root.get("type") == "qemu"
    assert root.find("os/type").get("arch") == "x86_64"
    assert [root.findtext(f"os/{t}") for t in ("kernel", "initrd", "cmdline")] == [
        "/k/vmlinuz", "/k/initrd", "console=ttyS0"]
    assert root.find("os/boot") is None  # direct kernel boot
    assert root.find("features/acpi") is not None and root.find("features/apic") is not None
    assert root.find("cpu") is None  # TCG: qemu's default CPU model
    assert root.find("devices/disk/driver").attrib == {"name": "qemu", "type": "qcow2"}
    log = root.find("devices/serial[@type='pty']/log")
    assert log.attrib == {"file": spec.console_log_path, "append": "off"}
    console = root.find("devices/console")
    assert console.get("type") == "pty" and console.find("target").get("type") == "serial"
    # Nova's SMBIOS system table, shown to the guest
    assert root.find("os/smbios").get("mode") == "sysinfo"
    entries = {e.get("name"): e.text for e in root.iterfind("sysinfo[@type='smbios']/system/entry")}
    assert entries == {"manufacturer": "OpenStack Foundation", "product": "OpenStack Nova",
                       "version": novalite.__version__, "serial": spec.instance_uuid,
                       "uuid": spec.instance_uuid, "family": "Virtual Machine"}


def test_design_kvm_and_validation() -> None:
    assert design_guest(make_spec("kvm"), "kvm", arch="x86_64").cpu_mode == "host-model"
    no_log = design_guest(make_spec(console_log_path=None), "qemu", arch="x86_64")
    assert no_log.format_dom().find("devices/serial/log") is None
    with pytest.raises(VirtError):
        design_guest(make_spec(ramdisk="/k/initrd"), "qemu")
    with pytest.raises(VirtError):
        design_guest(make_spec(), "xen")


def test_driver_refuses_foreign_virt_type() -> None:
    # Constructing the driver opens nothing, so this needs no running qemu.
    qemu_host = LibvirtDriver("qemu:///system", "qemu")
    with pytest.raises(VirtError):
        qemu_host.design(make_spec("kvm"))
    assert qemu_host.design(make_spec("qemu")).virt_type == "qemu"
    test_host = LibvirtDriver("test:///default", "qemu")
    assert test_host.design(make_spec("kvm")).virt_type == "test"


def _schema_errors(xml_path: Path) -> str | None:
    """Validate a domain XML file with virt-xml-validate, or libvirt's RNG via lxml."""
    tool = shutil.which("virt-xml-validate")
    if tool and shutil.which("xmllint"):  # the script needs xmllint (libxml2-utils)
        proc = subprocess.run([tool, str(xml_path), "domain"], capture_output=True, text=True)
        return None if proc.returncode == 0 else proc.stdout + proc.stderr
    if DOMAIN_RNG.exists():
        rng = etree.RelaxNG(etree.parse(str(DOMAIN_RNG)))
        ok = rng.validate(etree.parse(str(xml_path)))
        return None if ok else str(rng.error_log)
    pytest.skip("neither virt-xml-validate+xmllint nor libvirt's domain.rng is installed")


@pytest.mark.parametrize("domain_type", ["qemu", "kvm", "test"])
@pytest.mark.parametrize("kernel", [None, "/k/vmlinuz"])
def test_designed_xml_passes_libvirt_schema(tmp_path: Path, domain_type: str,
                                            kernel: str | None) -> None:
    spec = make_spec(domain_type, kernel=kernel, cmdline="console=ttyS0" if kernel else None)
    path = tmp_path / "domain.xml"
    path.write_text(design_guest(spec, domain_type, arch="x86_64").to_xml())
    assert _schema_errors(path) is None


# -------------------------------------------------------------------- driver

@pytest.mark.asyncio
async def test_driver_satisfies_contract(drv: LibvirtDriver) -> None:
    assert isinstance(drv, VirtDriver)


@pytest.mark.asyncio
async def test_init_host_reports_simulated_host(drv: LibvirtDriver) -> None:
    host = await drv.init_host()
    assert (host.hostname, host.vcpus, host.memory_mb) == ("sim1", 16, 32768)
    assert host.hypervisor_type == "TEST"
    assert isinstance(host.hypervisor_version, int)
    assert host.cpu_arch == "x86_64"


@pytest.mark.asyncio
async def test_pool_usage_of_a_simulated_host_is_the_test_drivers(drv: LibvirtDriver, tmp_path: Path) -> None:
    """A test:/// host's disk is its pool's too: libvirt's test driver gives every pool 100 GiB, all free."""
    pool = StoragePoolSpec(name="nl-usage", type="dir", target=str(tmp_path / "pool"))
    await drv.ensure_pool(pool)
    usage = await drv.pool_usage(pool.name)
    assert (usage.capacity, usage.allocation, usage.available) == (100 * 1024**3, 0, 100 * 1024**3)


async def test_pool_usage_is_what_virsh_pool_info_shows(tmp_path: Path) -> None:
    """A real host's disk facts are its pool's info, the numbers `virsh pool-info` prints."""
    pool = StoragePoolSpec(name=f"nlusage{uuid.uuid4().hex[:8]}", type="dir", target=str(tmp_path / "pool"))
    async with LibvirtDriver("qemu:///system", "qemu") as drv:
        await drv.ensure_pool(pool)
        try:
            usage = await drv.pool_usage(pool.name)
            out = subprocess.run(["virsh", "-c", "qemu:///system", "pool-info", "--bytes", pool.name],
                                 capture_output=True, text=True, check=True).stdout
        finally:
            sp = drv.host.connection().storagePoolLookupByName(pool.name)
            sp.destroy()
            sp.undefine()
    shown = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}
    st = os.statvfs(tmp_path)
    assert usage.capacity == int(shown["Capacity"]) == st.f_blocks * st.f_frsize
    # Free space moves while other work writes; the two reads are a moment apart.
    assert abs(usage.available - int(shown["Available"])) < 256 * 1024**2


@pytest.mark.parametrize("direct", [True, False], ids=["file-on-this-machine", "through-libvirt"])
async def test_console_output_is_the_tail_of_the_log_the_domain_names(tmp_path: Path, direct: bool) -> None:
    """The serial log is a file of a pool on the host: read directly on this machine (as Nova
    does), or back through a stream (virStorageVolDownload) as from a remote host, the same
    bytes either way; the log a stopped (defined) domain names too, none before the guest wrote it."""
    pool = StoragePoolSpec(name=f"nlcon{uuid.uuid4().hex[:8]}", type="dir", target=str(tmp_path / "pool"))
    log = tmp_path / "pool" / "console.log"
    spec = make_spec("qemu", console_log_path=str(log), disks=[], nics=[])
    async with LibvirtDriver("qemu:///system", "qemu") as drv:
        assert drv._local_files  # qemu:///system is this machine's
        drv._local_files = direct  # a remote host's way, on this machine's libvirt
        conn = drv.host.connection()
        await drv.ensure_pool(pool)
        try:
            assert await drv.get_console_output(spec.instance_uuid, 100) is None  # no domain
            conn.defineXML(drv.design(spec).to_xml())
            assert await drv.get_console_output(spec.instance_uuid, 100) is None  # nothing written yet
            log.write_bytes(b"a" * 500 + b"\nlast line\n")  # as the host's virtlogd writes it
            assert await drv.get_console_output(spec.instance_uuid, 11) == b"\nlast line\n"
            assert len(await drv.get_console_output(spec.instance_uuid, 100)) == 100
            log.write_bytes(b"a" * 600)  # grown since: the tail is read afresh
            assert await drv.get_console_output(spec.instance_uuid, 1000) == b"a" * 600
        finally:
            await drv.destroy(spec.instance_uuid)
            for name in await drv.list_volumes(pool.name):
                await drv.delete_volume(pool.name, name)
            sp = conn.storagePoolLookupByName(pool.name)
            sp.destroy()
            sp.undefine()


@pytest.mark.asyncio
async def test_spawn_get_info_destroy(drv: LibvirtDriver) -> None:
    await drv.init_host()
    spec = make_spec()
    await drv.spawn(spec)
    assert spec.instance_uuid in await drv.list_instance_uuids()
    info = await drv.get_info(spec.instance_uuid)
    assert info is not None
    assert info.power_state == virt.RUNNING
    assert (info.max_mem_kb, info.num_cpu) == (512 * 1024, 2)

    await drv.destroy(spec.instance_uuid)
    assert spec.instance_uuid not in await drv.list_instance_uuids()
    assert await drv.get_info(spec.instance_uuid) is None
    await drv.destroy(spec.instance_uuid)  # idempotent
    await drv.destroy(str(uuid.uuid4()))  # never existed: fine too


@pytest.mark.asyncio
async def test_libvirt_keeps_designed_metadata(drv: LibvirtDriver) -> None:
    spec = make_spec()
    await drv.spawn(spec)
    stored = await drv.get_domain_config(spec.instance_uuid)
    assert stored.name == spec.name and stored.uuid == spec.instance_uuid
    assert stored.metadata == design_guest(spec, "test").metadata
    assert isinstance(stored, LibvirtConfigGuest)


@pytest.mark.asyncio
async def test_duplicate_name_fails_and_leaves_original(drv: LibvirtDriver) -> None:
    first = make_spec()
    await drv.spawn(first)
    clash = make_spec(name=first.name)  # new uuid, same domain name
    with pytest.raises(InstanceExists):
        await drv.spawn(clash)
    assert await drv.list_instance_uuids() == [first.instance_uuid]
    assert (await drv.get_info(first.instance_uuid)).power_state == virt.RUNNING


@pytest.mark.asyncio
async def test_duplicate_uuid_fails_and_leaves_original(drv: LibvirtDriver) -> None:
    first = make_spec()
    await drv.spawn(first)
    # Same uuid and name: libvirt's defineXML would silently *redefine* the running
    # domain, and a naive rollback would then destroy it.
    for clash in (first, make_spec(instance_uuid=first.instance_uuid, name="instance-other")):
        with pytest.raises(InstanceExists):
            await drv.spawn(clash)
        assert await drv.list_instance_uuids() == [first.instance_uuid]
        assert (await drv.get_info(first.instance_uuid)).power_state == virt.RUNNING
    assert (await drv.get_domain_config(first.instance_uuid)).name == first.name


@pytest.mark.asyncio
async def test_concurrent_duplicate_spawns(drv: LibvirtDriver) -> None:
    spec = make_spec()
    results = await asyncio.gather(drv.spawn(spec), drv.spawn(spec), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["InstanceExists", "NoneType"]
    assert await drv.list_instance_uuids() == [spec.instance_uuid]


@pytest.mark.asyncio
async def test_cancelled_spawn_leaves_nothing(node_uri: str) -> None:
    async with LibvirtDriver(node_uri, "qemu", max_threads=1) as driver:
        await driver.init_host()
        gate = threading.Event()
        blocker = driver.host.submit(gate.wait, 10)  # occupy the only worker
        spec = make_spec()
        task = asyncio.create_task(driver.spawn(spec))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        gate.set()  # the queued spawn now runs to completion, then is undone
        with pytest.raises(asyncio.CancelledError):
            await task
        await blocker
        assert await driver.list_instance_uuids() == []


@pytest.mark.asyncio
async def test_fifty_concurrent_spawns_do_not_block_loop(drv: LibvirtDriver) -> None:
    await drv.init_host()
    specs = [make_spec() for _ in range(50)]
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.001)

    tick_task = asyncio.create_task(ticker())
    start = time.monotonic()
    await asyncio.gather(*(drv.spawn(s) for s in specs))
    elapsed = time.monotonic() - start
    await asyncio.sleep(0.01)
    stop.set()
    await tick_task

    assert sorted(await drv.list_instance_uuids()) == sorted(s.instance_uuid for s in specs)
    infos = await asyncio.gather(*(drv.get_info(s.instance_uuid) for s in specs))
    assert {i.power_state for i in infos} == {virt.RUNNING}
    assert len(ticks) >= 3
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert max(gaps) < 0.25, f"event loop stalled for {max(gaps):.3f}s (spawns took {elapsed:.3f}s)"
    assert 0 < drv.host.worker_threads() <= 4

    await asyncio.gather(*(drv.destroy(s.instance_uuid) for s in specs))
    assert await drv.list_instance_uuids() == []


@pytest.mark.asyncio
async def test_test_driver_state_is_per_connection(node_uri: str) -> None:
    """Two drivers on one node file are two hosts: the test driver keeps state per connection."""
    async with LibvirtDriver(node_uri, "qemu") as a, \
            LibvirtDriver(node_uri, "qemu") as b:
        spec = make_spec()
        await a.spawn(spec)
        assert await a.list_instance_uuids() == [spec.instance_uuid]
        assert await b.list_instance_uuids() == []


@pytest.mark.asyncio
async def test_closed_and_unreachable(node_uri: str, tmp_path: Path) -> None:
    driver = LibvirtDriver(node_uri, "qemu")
    await driver.init_host()
    await driver.close()
    await driver.close()  # idempotent
    with pytest.raises(HypervisorUnavailable):
        await driver.list_instance_uuids()
    async with LibvirtDriver(f"test://{tmp_path}/missing.xml", "qemu") as broken:
        with pytest.raises(HypervisorUnavailable):
            await broken.init_host()


@pytest.mark.asyncio
@pytest.mark.skipif(os.environ.get("NOVALITE_QEMU_TESTS") != "1",
                    reason="set NOVALITE_QEMU_TESTS=1 to use qemu:///system (slow on this box)")
async def test_qemu_start_failure_is_rolled_back(tmp_path: Path) -> None:
    """qemu defines fine but cannot start without its disk: the definition must be undone."""
    spec = make_spec("qemu", name=f"novalite-test-{uuid.uuid4().hex[:8]}", memory_mb=64,
                     vcpus=1, disks=[DiskSpec(path=str(tmp_path / "missing.qcow2"))],
                     nics=[NicSpec(mac="fa:16:3e:00:00:99")], console_log_path=None)
    async with LibvirtDriver("qemu:///system", "qemu", state_dir=tmp_path) as driver:
        try:
            await driver.init_host()
        except HypervisorUnavailable:
            pytest.skip("qemu:///system is not reachable")
        with pytest.raises(VirtError):
            await driver.spawn(spec)
        assert spec.instance_uuid not in await driver.list_instance_uuids()
        assert await driver.get_info(spec.instance_uuid) is None


# ------------------------------------------------- one host: connection, pool, events

@pytest.mark.asyncio
async def test_domains_networks_and_storage_share_one_connection_and_pool(drv: LibvirtDriver,
                                                                           tmp_path: Path) -> None:
    """A test:/// host's networks and pools sit beside its domains: one connection, one bounded pool."""
    net = NetworkSpec(name="nl-shared", uuid=str(uuid.uuid4()), cidr="10.30.0.0/24", gateway="10.30.0.1",
                      dhcp_start="10.30.0.2", dhcp_end="10.30.0.254")
    pool = StoragePoolSpec(name="nl-pool", type="dir", target=str(tmp_path / "pool"))
    await drv.ensure_network(net)
    await drv.ensure_pool(pool)
    specs = [make_spec(nics=[NicSpec(mac=f"fa:16:3e:00:10:{i:02x}", network=net.name)]) for i in range(8)]
    await asyncio.gather(
        *(drv.spawn(s) for s in specs),
        *(drv.add_dhcp_host(net.name, s.nics[0].mac, f"10.30.0.{10 + i}") for i, s in enumerate(specs)),
        *(drv.create_volume(pool.name, f"v{i}", 1, pool.volume_format) for i in range(8)),
    )
    conn = drv.host.connection()  # what every verb used
    assert net.name in [n.name() for n in conn.listAllNetworks(0)]
    assert pool.name in [p.name() for p in conn.listAllStoragePools(0)]
    assert {d.UUIDString() for d in conn.listAllDomains(0)} == {s.instance_uuid for s in specs}
    assert len(await drv.dhcp_hosts(net.name)) == 8
    assert sorted(await drv.list_volumes(pool.name)) == [f"v{i}" for i in range(8)]
    assert 0 < drv.host.worker_threads() <= 4  # the driver's max_threads, for all three kinds of call


@pytest.mark.asyncio
async def test_a_test_host_never_reconnects(drv: LibvirtDriver) -> None:
    """The test driver's host lives in its connection: a 'dead connection' error must not reopen it."""
    spec = make_spec()
    await drv.spawn(spec)
    conn = drv.host.connection()

    def connection_died() -> None:
        raise VirtError("connection is gone", libvirt.VIR_ERR_INVALID_CONN)

    with pytest.raises(VirtError):
        await drv.host.call(connection_died)
    assert drv.host.connection() is conn
    assert await drv.list_instance_uuids() == [spec.instance_uuid]
    assert await drv.is_alive()
    await drv.close()
    assert not await drv.is_alive()


@pytest.fixture(scope="module")
def daemon_host():
    """A simulated host served by its own libvirtd: a remote connection, as a real hypervisor's."""
    from novalite.virt.simhost import PersistentTestHost

    if shutil.which("libvirtd") is None and not Path("/usr/sbin/libvirtd").exists():
        pytest.skip("no libvirtd binary")
    host = PersistentTestHost("reconnect")
    try:
        host.start()
    except RuntimeError as exc:
        pytest.skip(f"cannot start a private libvirtd: {exc}")
    yield host
    host.stop()


@pytest.mark.asyncio
async def test_a_remote_host_reconnects_and_keeps_its_event_registration(daemon_host) -> None:
    events: list[tuple[str, str]] = []
    async with LibvirtDriver(daemon_host.uri, "test") as driver:
        await driver.init_host()
        await driver.watch_lifecycle(lambda uuid_, _state, name: events.append((uuid_, name)))
        first = driver.host.connection()

        def connection_died() -> None:
            raise VirtError("connection is gone", libvirt.VIR_ERR_NO_CONNECT)

        with pytest.raises(VirtError):
            await driver.host.call(connection_died)
        spec = make_spec("test")
        await driver.spawn(spec)  # on a new connection, the daemon's host unchanged
        assert driver.host.connection() is not first
        assert spec.instance_uuid in daemon_host.domains()
        for _ in range(100):
            if (spec.instance_uuid, "started") in events:
                break
            await asyncio.sleep(0.05)
        assert (spec.instance_uuid, "started") in events  # registered again on the new connection
        # libvirtd restarted behind our back: the next call finds isAlive() false and reopens.
        second = driver.host.connection()
        second.close()
        assert await driver.list_instance_uuids() == [spec.instance_uuid]
        assert driver.host.connection() is not second
        await driver.destroy(spec.instance_uuid)


# ------------------------------------------------- disks, storage and networks on test:///

@pytest.mark.asyncio
async def test_disk_hotplug_on_the_test_driver_edits_the_persistent_definition(drv: LibvirtDriver) -> None:
    """The test driver has no attachDevice: the documented fallback redefines the domain."""
    spec = make_spec()
    await drv.spawn(spec)
    disk = DiskSpec(path="/pool/volume-1", target_dev="vdb", driver_type="raw")
    await drv.attach_disk(spec.instance_uuid, disk)
    await drv.attach_disk(spec.instance_uuid, disk)  # idempotent
    assert await drv.disk_targets(spec.instance_uuid) == {"vda", "sda", "vdb"}
    assert "/pool/volume-1" in await drv.domain_xml(spec.instance_uuid, inactive=True)
    kept = LibvirtConfigGuest.from_xml(await drv.domain_xml(spec.instance_uuid, inactive=True))
    assert kept.metadata[0].uuid == spec.instance_uuid  # the redefinition keeps the rest of the domain
    await drv.detach_disk(spec.instance_uuid, disk)
    assert await drv.disk_targets(spec.instance_uuid) == {"vda", "sda"}
    await drv.detach_disk(spec.instance_uuid, disk)  # a missing disk is fine
    await drv.detach_disk(str(uuid.uuid4()), disk)  # and so is a missing domain
    with pytest.raises(virt.InstanceNotFound):
        await drv.disk_targets(str(uuid.uuid4()))


@pytest.mark.asyncio
async def test_storage_verbs_on_the_test_driver_and_no_streams_there(drv: LibvirtDriver, tmp_path: Path) -> None:
    pool = StoragePoolSpec(name="nl-sim", type="dir", target=str(tmp_path / "sim"))
    await drv.ensure_pool(pool)
    await drv.ensure_pool(pool)  # idempotent
    path = await drv.create_volume(pool.name, "base", 1, "qcow2")
    assert path == str(tmp_path / "sim" / "base")
    assert await drv.clone_volume(pool.name, "base", "copy", 2, "qcow2") == str(tmp_path / "sim" / "copy")
    assert sorted(await drv.list_volumes(pool.name)) == ["base", "copy"]
    assert await drv.delete_volume(pool.name, "copy") is True
    assert await drv.delete_volume(pool.name, "copy") is False
    with pytest.raises(VirtError) as upload:
        await drv.upload_volume(pool.name, "base", __file__)
    assert upload.value.code == libvirt.VIR_ERR_NO_SUPPORT
    with pytest.raises(VirtError) as download:
        await drv.download_volume(pool.name, "base", tmp_path / "out")
    assert download.value.code == libvirt.VIR_ERR_NO_SUPPORT
    with pytest.raises(VirtError):
        await drv.create_volume("no-such-pool", "v", 1, "raw")


@pytest.mark.asyncio
async def test_network_verbs_on_the_test_driver(drv: LibvirtDriver) -> None:
    net = NetworkSpec(name="nl-net", uuid=str(uuid.uuid4()), cidr="10.31.0.0/24", gateway="10.31.0.1",
                      dhcp_start="10.31.0.2", dhcp_end="10.31.0.254", mtu=1400)
    bridge = await drv.ensure_network(net)
    assert bridge.startswith("virbr-nl") and await drv.ensure_network(net) == bridge
    await drv.add_dhcp_host(net.name, "fa:16:3e:00:00:01", "10.31.0.5")
    await drv.add_dhcp_host(net.name, "fa:16:3e:00:00:02", "10.31.0.5")  # the IP moves to another MAC
    assert await drv.dhcp_hosts(net.name) == {"fa:16:3e:00:00:02": "10.31.0.5"}
    assert await drv.sync_dhcp_hosts(net.name, {"fa:16:3e:00:00:03": "10.31.0.6"}) == (1, 1)
    assert await drv.remove_dhcp_host(net.name, "fa:16:3e:00:00:03") is True
    assert await drv.remove_dhcp_host(net.name, "fa:16:3e:00:00:03") is False
    moved = dataclasses.replace(net, cidr="10.32.0.0/24", gateway="10.32.0.1", dhcp_start="10.32.0.2",
                                dhcp_end="10.32.0.9")
    assert await drv.ensure_network(moved) == bridge  # redefined on its bridge
    assert etree.fromstring((await drv.network_xml(net.name)).encode()).find("ip").get("address") == "10.32.0.1"
    await drv.undefine_network(net.name)
    await drv.undefine_network(net.name)
    assert await drv.dhcp_hosts(net.name) == {}
    with pytest.raises(VirtError):
        await drv.add_dhcp_host(net.name, "fa:16:3e:00:00:01", "10.31.0.5")


# ------------------------------------------------- streams against qemu:///system

@pytest.mark.qemu
@pytest.mark.asyncio
async def test_volume_upload_and_download_through_streams_on_qemu_system(tmp_path: Path) -> None:
    """A throwaway dir pool under a tmp dir: data in from a file and from an async source, out again."""
    pool = StoragePoolSpec(name=f"nl-stream-{uuid.uuid4().hex[:8]}", type="dir", target=str(tmp_path / "pool"))
    payload = os.urandom(3 * 256 * 1024 + 123)
    source = tmp_path / "payload"
    source.write_bytes(payload)
    async with LibvirtDriver("qemu:///system", "qemu") as driver:
        if not await driver.is_alive():
            pytest.skip("qemu:///system is not reachable")
        try:
            await driver.ensure_pool(pool)
            await driver.create_volume(pool.name, "from-file", 1, "raw")
            await driver.create_volume(pool.name, "from-chunks", 1, "raw")
            assert await driver.upload_volume(pool.name, "from-file", source) == len(payload)

            async def chunks():
                for i in range(0, len(payload), 100_000):
                    await asyncio.sleep(0)
                    yield payload[i:i + 100_000]

            assert await driver.upload_volume(pool.name, "from-chunks", chunks()) == len(payload)
            out = tmp_path / "out"
            size = await driver.download_volume(pool.name, "from-file", out)
            with out.open("rb") as f:
                assert size == out.stat().st_size == 1024**3 and f.read(len(payload)) == payload
            out.unlink()
            head, total = bytearray(), 0

            async def sink(data: bytes) -> None:
                nonlocal total
                head.extend(data[:len(payload) - len(head)])
                total += len(data)

            assert await driver.download_volume(pool.name, "from-chunks", sink) == total == 1024**3
            assert bytes(head) == payload
        finally:
            def remove_pool() -> None:
                conn = driver.host.connection()
                try:
                    p = conn.storagePoolLookupByName(pool.name)
                except libvirt.libvirtError:
                    return
                for vol in p.listAllVolumes(0):
                    vol.delete(0)
                p.destroy()
                p.delete(0)
                p.undefine()

            await driver.host.call(remove_pool)
