"""Nova's ``hw_cdrom_bus`` image property puts the config drive on IDE (hda) for guest kernels
without an AHCI driver, such as Debian's cloud kernel (``novalite image build-cloud``); any other
value keeps SATA (sda). Simulated hosts: the domain XML the driver defined."""

from __future__ import annotations

from conftest import add_image
from test_rebuild import boot
from test_rescue import disks


async def test_hw_cdrom_bus_ide_puts_the_config_drive_on_hda_and_other_values_keep_sata(cloud):
    ide = await boot(cloud, await add_image(cloud, "ide", hw_cdrom_bus="ide"), config_drive=True)
    assert await disks(cloud, ide["id"]) == [("vda", "disk", "disk"), ("hda", "cdrom", "disk.config")]
    odd = await boot(cloud, await add_image(cloud, "odd", hw_cdrom_bus="floppy"), name="vm2", config_drive=True)
    assert await disks(cloud, odd["id"]) == [("vda", "disk", "disk"), ("sda", "cdrom", "disk.config")]
