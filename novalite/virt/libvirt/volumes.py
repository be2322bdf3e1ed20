"""Hot-plugging volume disks into a libvirt domain, through the driver's worker threads.

Attach: ``attachDeviceFlags(AFFECT_LIVE | AFFECT_CONFIG)`` on a running domain
(CONFIG only on a stopped one), as Nova's libvirt driver does. Detach:
``detachDeviceFlags`` likewise, then wait until the live XML no longer has the
disk (the guest must let go of a PCI device: the request is asynchronous),
asking again once before giving up.

libvirt's test driver supports neither call (VIR_ERR_NO_SUPPORT): there the disk
is added to / removed from the domain's persistent definition with defineXML,
so simulated hosts show attachments in their inactive XML.
"""

from __future__ import annotations

import time

import libvirt
import structlog
from lxml import etree

from novalite.virt.driver import DiskSpec, VirtError
from novalite.virt.libvirt.driver import LibvirtDriver, _design_disk, _translate

log = structlog.get_logger(__name__)

_LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
_CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG


def disk_xml(driver: LibvirtDriver, disk: DiskSpec) -> str:
    return _design_disk(disk, driver.domain_type).to_xml(pretty=False)


def _targets(xml: str) -> set[str]:
    return {t.get("dev") for t in etree.fromstring(xml.encode()).iterfind("devices/disk/target")}


def _redefine(conn: libvirt.virConnect, dom: libvirt.virDomain, add: str | None, remove: str | None) -> None:
    root = etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
    devices = root.find("devices")
    if remove is not None:
        for d in devices.findall("disk"):
            t = d.find("target")
            if t is not None and t.get("dev") == remove:
                devices.remove(d)
    if add is not None:
        devices.append(etree.fromstring(add.encode()))
    conn.defineXML(etree.tostring(root, encoding="unicode"))


def _attach_sync(driver: LibvirtDriver, instance_uuid: str, xml: str, target: str) -> None:
    conn = driver._connection()
    dom = driver._lookup(conn, instance_uuid)
    try:
        live = dom.isActive()
        if target in _targets(dom.XMLDesc(0 if live else libvirt.VIR_DOMAIN_XML_INACTIVE)):
            return  # already there (a retried attach)
        try:
            dom.attachDeviceFlags(xml, (_LIVE | _CONFIG) if live else _CONFIG)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise
            _redefine(conn, dom, xml, None)
    except libvirt.libvirtError as exc:
        raise _translate(exc, f"cannot attach {target} to instance {instance_uuid}") from exc
    log.info("disk_attached", instance_uuid=instance_uuid, target=target)


def _detach_sync(driver: LibvirtDriver, instance_uuid: str, xml: str, target: str, timeout: float) -> None:
    conn = driver._connection()
    try:
        dom = driver._lookup(conn, instance_uuid)
    except VirtError:
        return  # no domain: nothing holds the disk
    try:
        live = dom.isActive()
        try:
            if target not in _targets(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)):
                flags = _LIVE if live else 0
            else:
                flags = (_LIVE | _CONFIG) if live else _CONFIG
            if flags == 0:
                return
            if not live or target in _targets(dom.XMLDesc(0)):
                dom.detachDeviceFlags(xml, flags)
            elif flags & _CONFIG:
                dom.detachDeviceFlags(xml, _CONFIG)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise
            _redefine(conn, dom, None, target)
            return
        if not live:
            return
        for attempt in range(2):
            deadline = time.monotonic() + timeout / 2
            while time.monotonic() < deadline:
                if not dom.isActive() or target not in _targets(dom.XMLDesc(0)):
                    log.info("disk_detached", instance_uuid=instance_uuid, target=target)
                    return
                time.sleep(0.2)
            if attempt == 0:
                try:
                    dom.detachDeviceFlags(xml, _LIVE)  # ask the guest again, as Nova does
                except libvirt.libvirtError:
                    pass
        raise VirtError(f"guest of instance {instance_uuid} did not release {target} in {timeout:.0f}s")
    except libvirt.libvirtError as exc:
        raise _translate(exc, f"cannot detach {target} from instance {instance_uuid}") from exc


async def attach_disk(driver: LibvirtDriver, instance_uuid: str, disk: DiskSpec) -> None:
    """Plug ``disk`` into the domain, live and in its persistent definition; idempotent."""
    await driver._call(_attach_sync, driver, instance_uuid, disk_xml(driver, disk), disk.target_dev)


async def detach_disk(driver: LibvirtDriver, instance_uuid: str, disk: DiskSpec, timeout: float = 20) -> None:
    """Unplug ``disk`` and wait for the guest to let it go; a missing domain or disk is fine."""
    await driver._call(_detach_sync, driver, instance_uuid, disk_xml(driver, disk), disk.target_dev, timeout)


async def domain_xml(driver: LibvirtDriver, instance_uuid: str, inactive: bool = False) -> str:
    """The domain's live (or persistent) XML."""
    def read() -> str:
        dom = driver._lookup(driver._connection(), instance_uuid)
        return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)

    return await driver._call(read)
