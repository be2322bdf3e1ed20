"""libvirt virt driver: config objects (XML), the guest designer and the driver."""

from novalite.virt.libvirt.driver import LibvirtDriver, design_guest

__all__ = ["LibvirtDriver", "design_guest"]
