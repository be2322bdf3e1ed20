"""libvirt virt driver: the host (connection + workers), config objects (XML), the designers and the driver."""

from novalite.virt.libvirt.driver import LibvirtDriver, design_guest
from novalite.virt.libvirt.host import LibvirtHost

__all__ = ["LibvirtDriver", "LibvirtHost", "design_guest"]
