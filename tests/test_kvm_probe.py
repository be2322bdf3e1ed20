"""``[compute] virt_type = "auto"`` (issue #18): KVM where a KVM guest really runs, TCG elsewhere.

The decision logic is checked on its own; the real probe runs once per session against
qemu:///system, bounded by its timeout (on machines where KVM guests fail or hang it decides
TCG), and the hypervisor list shows what was decided.
"""

from __future__ import annotations

import asyncio
import json
import time

import libvirt
import pytest
from test_guest_e2e import qemu_cloud, test_image  # noqa: F401  (test_image is a fixture)
from test_networks import _qemu_system_available

from novalite.config import Config
from novalite.virt.libvirt import kvmprobe

TIMEOUT = 20


needs_libvirtd = pytest.mark.skipif(not _qemu_system_available(), reason="needs libvirtd (qemu:///system)")


def test_virt_type_defaults_to_auto_with_a_bounded_probe():
    compute = Config().compute
    assert (compute.virt_type, compute.virt_type_probe_timeout) == ("auto", 20)


def test_an_explicit_choice_stands_and_auto_follows_the_probe():
    assert kvmprobe.decide("kvm", "qemu:///system", "anything")[0] == "kvm"
    assert kvmprobe.decide("qemu", "qemu:///system", None)[0] == "qemu"
    assert kvmprobe.decide("auto", "qemu:///system", None) == ("kvm", "a KVM guest ran here")
    virt_type, reason = kvmprobe.decide("auto", "qemu:///system", "a kvm guest showed no progress in 20 s")
    assert virt_type == "qemu" and "no progress" in reason
    assert kvmprobe.decide("auto", "qemu+ssh://lab2/system", None)[0] == "qemu"  # probed only locally
    assert kvmprobe.decide("auto", "test:///default", None)[0] == "qemu"
    assert kvmprobe.is_local("qemu+unix:///system") and not kvmprobe.is_local("qemu+tcp://h/system")


def test_the_boot_sector_prints_the_marker_and_is_bootable():
    sector = kvmprobe.boot_sector()
    assert len(sector) == 512 and sector.endswith(b"\x55\xaa") and kvmprobe.MARKER in sector


def _probe_domains() -> list[str]:
    conn = libvirt.open("qemu:///system")
    try:
        return [d.name() for d in conn.listAllDomains() if d.name().startswith("novalite-kvm-probe-")]
    finally:
        conn.close()


@needs_libvirtd
async def test_the_probe_sees_a_guest_run_and_decides_within_its_timeout():
    # The check itself: the same boot sector under TCG always runs, so the probe must see it.
    assert await asyncio.to_thread(kvmprobe.probe_sync, "qemu:///system", TIMEOUT, "qemu") is None
    started = time.monotonic()
    virt_type, reason = await kvmprobe.resolve_virt_type("auto", "qemu:///system", TIMEOUT)
    assert time.monotonic() - started < TIMEOUT + 6
    assert virt_type in ("kvm", "qemu") and reason
    again = time.monotonic()
    assert await kvmprobe.resolve_virt_type("auto", "qemu:///system", TIMEOUT) == (virt_type, reason)
    assert time.monotonic() - again < 0.1  # decided once per process
    assert _probe_domains() == []


@pytest.mark.qemu
async def test_the_hypervisor_list_shows_what_auto_chose(pg_dsn, test_image, monkeypatch):  # noqa: F811
    monkeypatch.setenv("NOVALITE_COMPUTE__VIRT_TYPE", '"auto"')  # over qemu_cloud's "qemu"
    async with qemu_cloud(pg_dsn, test_image, prefix="nlkvm") as cloud:
        virt_type, _ = await kvmprobe.resolve_virt_type("auto", "qemu:///system", TIMEOUT)  # the cached decision
        _, body, _ = await cloud.compute("GET", "/os-hypervisors/detail", user="admin", version="2.27")
        (hypervisor,) = body["hypervisors"]
        assert hypervisor["hypervisor_type"] == "QEMU"
        model = json.loads(hypervisor["cpu_info"])["model"]
        assert (model == "qemu64") == (virt_type == "qemu"), (virt_type, model)
