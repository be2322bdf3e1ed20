"""DHCP for tenant networks: a network namespace with a veth on the bridge and a dnsmasq in it.

A tenant network's bridge holds no host address (so CIDRs may overlap between
networks on one host); its DHCP server lives, as Neutron's DHCP agent does it,
in a namespace of its own: the veth peer there carries the DHCP port's address
and a dnsmasq bound to it serves only the ports' fixed leases (``--dhcp-hostsfile``,
re-read on SIGHUP). dnsmasq is a separate process with its pid file under the
state directory, so it outlives a novalite restart and is adopted afterwards.

Interface names are limited to 15 characters by Linux; they carry a hash of the
cloud's libvirt prefix and the network id, so two clouds on one machine never
collide. Everything here is blocking: callers run it in the host's workers.

The namespace also carries the tenant network's metadata service, as Neutron's DHCP agent
does with its metadata proxy: ``169.254.169.254/32`` on the namespace's loopback, a DHCP
classless static route to it via the DHCP port's address, and a listening socket opened
inside the namespace (:meth:`DhcpNamespace.metadata_socket`) that novalite's one process
serves. No rule on the host is involved.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from novalite.virt.driver import METADATA_ADDRESS, NetworkSpec, VirtError

__all__ = ["DhcpNamespace", "TenantNames", "list_namespaces", "tenant_libvirt_name", "tenant_names",
           "tenant_prefix"]

log = structlog.get_logger(__name__)

LEASE_SECONDS = 86400  # Neutron's dhcp_lease_duration
_DHCP_DIR = "dhcp"
_NS_RUN_DIR = Path("/run/netns")
_START_WAIT = 5.0
_CLONE_NEWNET = 0x40000000  # setns(2)'s nstype for a network namespace


@dataclass(frozen=True, slots=True)
class TenantNames:
    """The host-side names of one tenant network: bridge, veth ends, namespace."""

    bridge: str
    veth_host: str  # on the bridge
    veth_ns: str  # in the namespace, holds the DHCP address
    namespace: str


def tenant_names(prefix: str, network_id: str) -> TenantNames:
    """Names unique per (cloud prefix, network): interfaces by hash (≤ 15 chars), the namespace in clear."""
    tag = hashlib.sha256(f"{prefix}{network_id}".encode()).hexdigest()[:10]
    return TenantNames(bridge=f"nlb{tag}", veth_host=f"nlv{tag}", veth_ns=f"nld{tag}",
                       namespace=f"{prefix}dhcp-{network_id}")


def tenant_libvirt_name(prefix: str, network_id: str) -> str:
    """The libvirt network name of a tenant network: prefix + "n" + 12 hex digits of its id."""
    return f"{prefix}n{network_id.replace('-', '')[:12]}"


def tenant_prefix(name: str, network_id: str) -> str | None:
    """The cloud prefix inside a tenant network's libvirt name; None when it is not one."""
    suffix = tenant_libvirt_name("", network_id)
    return name.removesuffix(suffix) if name.endswith(suffix) else None


def list_namespaces() -> list[str]:
    """The named network namespaces of this machine (``ip netns list``)."""
    try:
        return sorted(os.listdir(_NS_RUN_DIR))
    except FileNotFoundError:
        return []


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise VirtError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def dnsmasq_args(net: NetworkSpec, names: TenantNames, workdir: Path) -> list[str]:
    """The dnsmasq command line serving ``net``: DHCP only, fixed leases only, options from the subnet."""
    cidr = ipaddress.ip_network(net.cidr, strict=False)
    args = [
        # --user=root: dnsmasq re-reads the hostsfile after dropping privileges, and the state
        # directory need not be readable by "nobody".
        "dnsmasq", "--conf-file=", "--no-hosts", "--no-resolv", "--port=0", "--user=root",
        "--bind-interfaces", f"--interface={names.veth_ns}", "--except-interface=lo",
        f"--pid-file={workdir / 'pid'}", f"--dhcp-leasefile={workdir / 'leases'}",
        f"--dhcp-hostsfile={workdir / 'hosts'}",
        f"--dhcp-range={net.dhcp_start},{net.dhcp_end},{cidr.netmask},{LEASE_SECONDS}s",
        # Only the ports' MACs get a lease: a dynamic one could collide with a later port's IP.
        "--dhcp-ignore=tag:!known",
        f"--dhcp-option-force=option:mtu,{net.mtu}",
        f"--dhcp-option=option:router,{net.gateway}" if net.gateway else "--dhcp-option=option:router",
    ]
    if net.dns_nameservers:
        args.append("--dhcp-option=option:dns-server," + ",".join(net.dns_nameservers))
    if net.host_routes:
        routes = [f"{dst},{hop}" for dst, hop in net.host_routes]
        if net.gateway:
            # A client given option 121 ignores the router option: the default route goes along.
            routes.append(f"0.0.0.0/0,{net.gateway}")
        # Option 249 too, with the same routes, for the clients that only ask for Microsoft's (as Neutron does).
        args += ["--dhcp-option=option:classless-static-route," + ",".join(routes),
                 "--dhcp-option=249," + ",".join(routes)]
    return args


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _bind_in(namespace: Path, address: str, port: int, out: list) -> None:
    """In the calling thread: enter ``namespace``, bind a listening TCP socket, go back; the
    socket (or the error) is appended to ``out``. A socket keeps the namespace it was made in."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(namespace, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((address, port))
                sock.listen(128)
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
            out.append(sock)
        finally:
            _setns(home)
    except OSError as exc:
        out.append(exc)
    finally:
        os.close(home)


def listen_in_namespace(namespace: str, address: str, port: int) -> socket.socket:
    """A listening TCP socket on ``address:port`` inside the named network namespace.

    The namespace is entered by a thread of its own that ends afterwards, so no worker of the
    caller is ever left in another namespace, even when going back fails. OSError when the
    namespace is missing or the address cannot be bound there.
    """
    out: list[socket.socket | OSError] = []
    thread = threading.Thread(target=_bind_in, args=(_NS_RUN_DIR / namespace, address, port, out),
                              name=f"setns-{namespace}")
    thread.start()
    thread.join()
    if not out or isinstance(out[0], OSError):
        raise out[0] if out else OSError(f"no socket made in {namespace}")
    return out[0]


class DhcpNamespace:
    """The namespace, veth and dnsmasq of one tenant network on this machine.

    ``workdir`` (under the state directory) holds dnsmasq's pid file, hostsfile and leases.
    """

    def __init__(self, names: TenantNames, state_dir: Path) -> None:
        self.names = names
        self.workdir = state_dir / _DHCP_DIR / names.namespace

    @classmethod
    def of(cls, prefix: str, network_id: str, state_dir: Path) -> DhcpNamespace:
        return cls(tenant_names(prefix, network_id), state_dir)

    # -- namespace and veth --------------------------------------------------------
    def ensure(self, net: NetworkSpec) -> None:
        """Namespace, veth on the bridge with the DHCP address, and a dnsmasq serving ``net``."""
        n = self.names
        if n.namespace not in list_namespaces():
            # A dnsmasq or veth left from a namespace deleted behind our back serves nothing: renew them.
            if (pid := self.running_pid()) is not None:
                self._stop(pid)
            if _link_exists(n.veth_host):
                _ip("link", "del", n.veth_host)
            _ip("netns", "add", n.namespace)
        if not _link_exists(n.veth_host):
            _ip("link", "add", n.veth_host, "mtu", str(net.mtu), "type", "veth",
                "peer", "name", n.veth_ns, "mtu", str(net.mtu), "netns", n.namespace)
        _ip("link", "set", n.veth_host, "master", n.bridge, "mtu", str(net.mtu), "up")
        inside = ("netns", "exec", n.namespace, "ip")
        address = f"{net.dhcp_server}/{ipaddress.ip_network(net.cidr, strict=False).prefixlen}"
        current = _ip(*inside, "-4", "-o", "addr", "show", "dev", n.veth_ns).stdout
        for old in re.findall(r"inet (\S+)", current):
            if old != address:
                _ip(*inside, "addr", "del", old, "dev", n.veth_ns)
        if address not in current.split():
            _ip(*inside, "addr", "add", address, "dev", n.veth_ns)
        _ip(*inside, "link", "set", n.veth_ns, "mtu", str(net.mtu), "up")
        _ip(*inside, "link", "set", "lo", "up")
        self._ensure_dnsmasq(net)

    def remove(self) -> None:
        """Stop dnsmasq, remove the namespace (its veth end with it) and the host end; idempotent."""
        pid = self.running_pid()
        if pid is not None:
            self._stop(pid)
        if self.names.namespace in list_namespaces():
            _ip("netns", "del", self.names.namespace)
        if _link_exists(self.names.veth_host):
            _ip("link", "del", self.names.veth_host, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)
        log.info("dhcp_namespace_removed", namespace=self.names.namespace)

    # -- the metadata service -------------------------------------------------------
    def metadata_socket(self, port: int = 80) -> socket.socket:
        """A listening socket on 169.254.169.254:``port`` in the namespace, the address put on its
        loopback first (idempotent); VirtError when the namespace is missing or the port taken."""
        ns = self.names.namespace
        _ip("netns", "exec", ns, "ip", "addr", "replace", f"{METADATA_ADDRESS}/32", "dev", "lo")
        try:
            return listen_in_namespace(ns, METADATA_ADDRESS, port)
        except OSError as exc:
            raise VirtError(f"cannot listen on {METADATA_ADDRESS}:{port} in {ns}: {exc}") from None

    # -- dnsmasq -------------------------------------------------------------------
    def running_pid(self) -> int | None:
        """The pid of this network's dnsmasq if it runs (pid file + /proc: its command line names our pid file)."""
        try:
            pid = int((self.workdir / "pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if f"--pid-file={self.workdir / 'pid'}".encode() in cmdline else None

    def _cmdline(self, pid: int) -> list[str]:
        try:
            return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            return []

    def _ensure_dnsmasq(self, net: NetworkSpec) -> None:
        """Adopt a running dnsmasq started with the same options, else (re)start one."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        hosts = self.workdir / "hosts"
        if not hosts.exists():
            hosts.write_text("")
        args = dnsmasq_args(net, self.names, self.workdir)
        pid = self.running_pid()
        if pid is not None:
            if self._cmdline(pid) == args:
                return
            log.info("dnsmasq_restarted", namespace=self.names.namespace, pid=pid)
            self._stop(pid)
        (self.workdir / "pid").unlink(missing_ok=True)
        proc = subprocess.run(["ip", "netns", "exec", self.names.namespace, *args],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise VirtError(f"dnsmasq for {self.names.namespace} failed: {proc.stderr.strip()}")
        deadline = time.monotonic() + _START_WAIT
        while (pid := self.running_pid()) is None:
            if time.monotonic() > deadline:
                raise VirtError(f"dnsmasq for {self.names.namespace} wrote no pid file")
            time.sleep(0.05)
        log.info("dnsmasq_started", namespace=self.names.namespace, pid=pid)

    @staticmethod
    def _stop(pid: int) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + _START_WAIT
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)

    # -- fixed leases --------------------------------------------------------------
    def hosts(self) -> dict[str, str]:
        """MAC → IP of the hostsfile (MACs lower-cased); {} when there is none."""
        try:
            lines = (self.workdir / "hosts").read_text().splitlines()
        except FileNotFoundError:
            return {}
        return dict(line.split(",", 1) for line in lines if "," in line)

    def write_hosts(self, hosts: dict[str, str]) -> None:
        """Replace the hostsfile (atomically) and make dnsmasq re-read it."""
        if not self.workdir.is_dir():
            raise VirtError(f"no DHCP server for {self.names.namespace}")
        tmp = self.workdir / "hosts.tmp"
        tmp.write_text("".join(f"{mac.lower()},{ip}\n" for mac, ip in sorted(hosts.items())))
        tmp.replace(self.workdir / "hosts")
        pid = self.running_pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)
