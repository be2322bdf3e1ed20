"""``[compute] virt_type = "auto"``: use KVM where a KVM guest really runs, TCG ("qemu") elsewhere.

/dev/kvm being there is not enough: on some machines KVM guests hang. So the
probe boots a tiny transient KVM domain -- no image needed: a 1 MiB disk whose
boot sector writes a marker to the first serial port and halts -- and waits,
at most ``timeout`` seconds, for the marker in the domain's serial log. The
marker proves the vCPU ran guest code under KVM; anything else (libvirt offers
no kvm domain, the start fails or hangs, no marker in time) means TCG. The
probe runs in a thread of its own on a connection of its own, so a hung KVM
start holds up neither the loop nor a host's workers, and the domain is
destroyed whatever happens. The decision is cached per URI for the process.

Only local URIs are probed (the boot sector is a local file); a remote host
under "auto" gets TCG and the reason says to set ``virt_type = "kvm"``.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import libvirt
import structlog
from lxml import etree

from novalite.virt.driver import DiskSpec, GuestSpec
from novalite.virt.libvirt.driver import design_guest, domain_type_for
from novalite.virt.libvirt.host import silence_libvirt_stderr

__all__ = ["MARKER", "boot_sector", "decide", "resolve_virt_type"]

log = structlog.get_logger(__name__)

MARKER = b"NOVALITE-KVM-OK"
_POLL = 0.1  # seconds between two looks at the serial log
_DISK_BYTES = 1 << 20  # SeaBIOS boots no disk of a single sector
_decided: dict[str, tuple[str, str]] = {}  # uri -> (virt_type, reason), once per process


def boot_sector(marker: bytes = MARKER) -> bytes:
    """A BIOS boot sector: write ``marker`` to COM1 (port 0x3f8), then halt forever."""
    start = 22  # the marker's offset: right after the code below, loaded at 0x7c00
    code = bytes([
        0x31, 0xC0,                     # xor ax, ax
        0x8E, 0xD8,                     # mov ds, ax
        0xBA, 0xF8, 0x03,               # mov dx, 0x3f8
        0xBE, start, 0x7C,              # mov si, 0x7c00 + start
        0xAC,                           # next: lodsb
        0x84, 0xC0,                     # test al, al
        0x74, 0x03,                     # jz halt
        0xEE,                           # out dx, al
        0xEB, 0xF8,                     # jmp next
        0xFA,                           # halt: cli
        0xF4,                           # hlt
        0xEB, 0xFD,                     # jmp hlt
    ])
    assert len(code) == start
    body = code + marker + b"\r\n\0"
    return body + b"\0" * (510 - len(body)) + b"\x55\xaa"


def is_local(uri: str) -> bool:
    """A URI naming no other machine (``qemu:///system``, ``qemu+unix:///system``)."""
    scheme, _, rest = uri.partition("://")
    transport = scheme.partition("+")[2]
    return rest.startswith("/") and transport in ("", "unix")


def decide(configured: str, uri: str, probe_failure: str | None) -> tuple[str, str]:
    """The virt type and why: an explicit choice stands; under "auto" a probe that found no
    failure (``probe_failure`` None) means KVM, anything else TCG."""
    if configured != "auto":
        return configured, f'configured virt_type = "{configured}"'
    if domain_type_for(uri, configured) == "test":
        return "qemu", "a simulated host (libvirt's test driver) runs no guest"
    if not is_local(uri):
        return "qemu", 'remote host: the probe runs only locally; set virt_type = "kvm" to use KVM there'
    if probe_failure is None:
        return "kvm", "a KVM guest ran here"
    return "qemu", f"KVM unusable here: {probe_failure}"


def _offers(conn: libvirt.virConnect, domain_type: str) -> bool:
    caps = etree.fromstring(conn.getCapabilities().encode())
    return bool(caps.xpath(f"guest/arch/domain[@type='{domain_type}']"))


def _wait_for_marker(log_path: Path, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            if MARKER in log_path.read_bytes():
                return True
        except FileNotFoundError:
            pass
        time.sleep(_POLL)
    return False


def _first_line(exc: libvirt.libvirtError) -> str:
    return (exc.get_error_message() or str(exc)).splitlines()[0][:300]


def probe_sync(uri: str, timeout: float, domain_type: str = "kvm") -> str | None:
    """Boot the boot sector in a ``domain_type`` domain on ``uri``; None when it ran, else why
    not (blocking). Tests prove the check itself with "qemu", which always runs."""
    silence_libvirt_stderr()
    deadline = time.monotonic() + timeout
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        return f"cannot connect: {_first_line(exc)}"
    # qemu runs as its own user: the directory must be traversable, hence /var/tmp and 0755.
    with tempfile.TemporaryDirectory(prefix="novalite-kvm-probe-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        disk, console = work / "boot.img", work / "console.log"
        with open(disk, "wb") as f:
            f.write(boot_sector())
            f.truncate(_DISK_BYTES)
        spec = GuestSpec(instance_uuid=str(uuid.uuid4()), name=f"novalite-kvm-probe-{uuid.uuid4().hex[:8]}",
                         memory_mb=32, vcpus=1, virt_type=domain_type,
                         disks=[DiskSpec(str(disk), driver_type="raw")], console_log_path=str(console))
        domain = None
        try:
            if not _offers(conn, domain_type):
                return f"libvirt offers no {domain_type} domain type (no /dev/kvm?)"
            domain = conn.createXML(design_guest(spec, domain_type).to_xml(), 0)
            if _wait_for_marker(console, deadline):
                return None
            return f"a {domain_type} guest showed no progress in {timeout:g} s"
        except libvirt.libvirtError as exc:
            return f"a {domain_type} guest did not start: {_first_line(exc)}"
        finally:
            if domain is not None:
                try:
                    domain.destroy()  # transient: gone with it
                except libvirt.libvirtError:
                    pass
            conn.close()


async def resolve_virt_type(configured: str, uri: str, timeout: float) -> tuple[str, str]:
    """The virt type a host runs, and why (see the module docstring); probes once per URI."""
    if configured != "auto" or domain_type_for(uri, configured) == "test" or not is_local(uri):
        return decide(configured, uri, None)
    if uri not in _decided:
        try:
            failure = await asyncio.wait_for(asyncio.to_thread(probe_sync, uri, timeout), timeout + 5)
        except TimeoutError:
            failure = f"starting a KVM guest hung for {timeout + 5:g} s"
        _decided[uri] = decide(configured, uri, failure)
    return _decided[uri]
