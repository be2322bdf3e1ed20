"""A host's image cache as volumes of its instance pool (qemu:///system, a pool of this test's own).

Images are uploaded by stream, checked against Glance's checksum by reading them back (a copy
that differs is refused and removed), and pruned once unused for the configured age.
"""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest
from conftest import add_image

from novalite.api import keys
from novalite.compute.disks import DiskError, InstanceStore
from novalite.virt.driver import StoragePoolSpec
from novalite.virt.libvirt.driver import LibvirtDriver


async def test_images_are_uploaded_once_verified_against_glance_and_pruned_when_unused(cloud, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    good, bad = await add_image(cloud, "good"), await add_image(cloud, "bad")
    data = os.urandom(256 * 1024)
    for image_id, checksum in ((good, hashlib.md5(data).hexdigest()), (bad, "0" * 32)):
        (images / image_id).write_bytes(data)
        async with cloud.app[keys.DB].acquire() as conn:
            await conn.execute("UPDATE images SET checksum = $2 WHERE id = $1::uuid", image_id, checksum)
    pool = StoragePoolSpec(name=f"nlstore{uuid.uuid4().hex[:8]}-instances", type="dir", target=str(tmp_path / "pool"))
    async with LibvirtDriver("qemu:///system", "qemu") as driver:
        store = InstanceStore(driver, pool, False, images, cloud.app[keys.DB], tmp_path / "scratch")
        await store.ensure_pool()
        try:
            info = await store.image(good)
            assert info.path == store.image_path(good) and info.capacity == len(data)
            assert (await store.image(good)).path == info.path  # cached: no second upload
            with pytest.raises(DiskError, match="another checksum"):
                await store.image(bad)
            assert await driver.list_volumes(pool.name) == [store.image_volume(good)]  # the bad copy is gone

            assert await store.prune_images({good}, 60, now=0) == []  # in use
            assert await store.prune_images(set(), 60, now=10) == []  # unused since now
            assert await store.prune_images(set(), 60, now=69) == []
            assert await store.prune_images(set(), 60, now=70) == [good]
            assert await driver.list_volumes(pool.name) == []
        finally:
            for name in await driver.list_volumes(pool.name):
                await driver.delete_volume(pool.name, name)
            sp = driver.host.connection().storagePoolLookupByName(pool.name)
            sp.destroy()
            sp.undefine()
