"""The libvirt driver and its designer, against real libvirt (test driver; qemu where noted)."""

from __future__ import annotations

import asyncio
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

from novalite.virt import (
    DiskSpec,
    GuestSpec,
    HypervisorUnavailable,
    InstanceExists,
    NicSpec,
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
    driver = LibvirtDriver(node_uri, "qemu", disk_gb=500)
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
    qemu_host = LibvirtDriver("qemu:///system", "qemu", disk_gb=1)
    with pytest.raises(VirtError):
        qemu_host.design(make_spec("kvm"))
    assert qemu_host.design(make_spec("qemu")).virt_type == "qemu"
    test_host = LibvirtDriver("test:///default", "qemu", disk_gb=1)
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
    assert (host.hostname, host.vcpus, host.memory_mb, host.local_gb) == ("sim1", 16, 32768, 500)
    assert host.hypervisor_type == "TEST"
    assert isinstance(host.hypervisor_version, int)
    assert host.cpu_arch == "x86_64"


@pytest.mark.asyncio
async def test_local_gb_from_state_dir(node_uri: str, tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    async with LibvirtDriver(node_uri, "qemu", state_dir=tmp_path) as driver:
        host = await driver.init_host()
    assert host.local_gb == st.f_blocks * st.f_frsize // 1024**3


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
    async with LibvirtDriver(node_uri, "qemu", max_threads=1, disk_gb=1) as driver:
        await driver.init_host()
        gate = threading.Event()
        blocker = driver._submit(gate.wait, 10)  # occupy the only worker
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
    workers = [t.name for t in threading.enumerate() if t.name.startswith("libvirt-")]
    assert 0 < len(workers) <= 4

    await asyncio.gather(*(drv.destroy(s.instance_uuid) for s in specs))
    assert await drv.list_instance_uuids() == []


@pytest.mark.asyncio
async def test_test_driver_state_is_per_connection(node_uri: str) -> None:
    """Two drivers on one node file are two hosts: the test driver keeps state per connection."""
    async with LibvirtDriver(node_uri, "qemu", disk_gb=1) as a, \
            LibvirtDriver(node_uri, "qemu", disk_gb=1) as b:
        spec = make_spec()
        await a.spawn(spec)
        assert await a.list_instance_uuids() == [spec.instance_uuid]
        assert await b.list_instance_uuids() == []


@pytest.mark.asyncio
async def test_closed_and_unreachable(node_uri: str, tmp_path: Path) -> None:
    driver = LibvirtDriver(node_uri, "qemu", disk_gb=1)
    await driver.init_host()
    await driver.close()
    await driver.close()  # idempotent
    with pytest.raises(HypervisorUnavailable):
        await driver.list_instance_uuids()
    async with LibvirtDriver(f"test://{tmp_path}/missing.xml", "qemu", disk_gb=1) as broken:
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
