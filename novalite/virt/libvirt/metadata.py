"""The metadata redirect of a configured network on this machine, as Nova's nova-network made it.

A guest asks ``169.254.169.254:80``; a DHCP classless static route sends that address to the
network's gateway (the bridge's host address), and one iptables ``nat PREROUTING`` rule per
bridge turns it into novalite's metadata listener on that gateway (``[metadata] port``). The
packet never leaves the machine. Each rule carries the comment ``"<libvirt network> metadata"``,
so a cloud finds its own rules by its libvirt prefix: made when the network is ensured, removed
with it, and those of networks gone from libvirt pruned at start.
"""

from __future__ import annotations

import shlex
import subprocess

from novalite.virt.driver import METADATA_ADDRESS, VirtError

__all__ = ["ensure_redirect", "prune_redirects", "remove_redirect"]

_SUFFIX = " metadata"


def _rule(network: str, bridge: str, gateway: str, port: int) -> list[str]:
    """The rule's match and target, as ``iptables -t nat -S`` prints them after the chain name."""
    return ["-d", f"{METADATA_ADDRESS}/32", "-i", bridge, "-p", "tcp", "-m", "tcp", "--dport", "80",
            "-m", "comment", "--comment", network + _SUFFIX,
            "-j", "DNAT", "--to-destination", f"{gateway}:{port}"]


def _bridge(rule: list[str]) -> str | None:
    return rule[rule.index("-i") + 1] if "-i" in rule else None


def _iptables(*args: str) -> str:
    try:
        proc = subprocess.run(["iptables", "-w", "-t", "nat", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise VirtError(f"iptables not found: {exc}") from None
    if proc.returncode != 0:
        raise VirtError(f"iptables -t nat {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def _redirects() -> dict[str, list[list[str]]]:
    """Libvirt network name → the metadata rules (match and target) commented with it."""
    found: dict[str, list[list[str]]] = {}
    for line in _iptables("-S", "PREROUTING").splitlines():
        words = shlex.split(line)
        if words[:2] != ["-A", "PREROUTING"] or "--comment" not in words:
            continue
        comment = words[words.index("--comment") + 1]
        if comment.endswith(_SUFFIX):
            found.setdefault(comment.removesuffix(_SUFFIX), []).append(words[2:])
    return found


def ensure_redirect(network: str, bridge: str, gateway: str, port: int) -> None:
    """Exactly one metadata rule for ``network``: from its bridge to ``gateway:port``; idempotent.

    A bridge belongs to one libvirt network at a time, and libvirt reuses the names of bridges
    that are gone, so any other metadata rule on this bridge is stale (left by a network of any
    cloud that vanished without its cleanup) and would catch the guests' requests first: it goes.
    """
    wanted = _rule(network, bridge, gateway, port)
    rules = [(name, rule) for name, found in _redirects().items() for rule in found
             if name == network or _bridge(rule) == bridge]
    for _, rule in rules:
        if rule != wanted:
            _iptables("-D", "PREROUTING", *rule)
    if wanted not in [rule for _, rule in rules]:
        _iptables("-A", "PREROUTING", *wanted)


def remove_redirect(network: str) -> None:
    """Remove ``network``'s metadata rules (none: nothing to do)."""
    for rule in _redirects().get(network, []):
        _iptables("-D", "PREROUTING", *rule)


def prune_redirects(prefix: str, networks: set[str]) -> list[str]:
    """Remove the metadata rules of this cloud's (``prefix``) networks not among ``networks``;
    returns their network names."""
    stale = [name for name in _redirects() if name.startswith(prefix) and name not in networks]
    for name in stale:
        remove_redirect(name)
    return stale
