"""Networks: isolated libvirt networks, ports with MACs and fixed IPs, DHCP host entries."""

from novalite.network.api import NetworkAPI, PortInfo, default_networks, network_data

__all__ = ["NetworkAPI", "PortInfo", "default_networks", "network_data"]
