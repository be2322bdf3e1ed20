"""The locally built test guest: its initramfs, and a real boot under qemu TCG."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import libvirt
import pycdlib
import pytest

from novalite.api import keys
from novalite.image import testimage
from novalite.virt import DiskSpec, GuestSpec, NicSpec
from novalite.virt.libvirt.driver import design_guest

# Shared across test sessions so the .debs are fetched and unpacked once per machine.
CACHE = Path(os.environ.get("NOVALITE_TEST_IMAGE_CACHE", "/var/tmp/novalite-testimage-cache"))


@pytest.fixture(scope="session")
def test_image() -> testimage.TestImage:
    try:
        return testimage.build(CACHE)
    except testimage.BuildError as exc:
        pytest.skip(f"cannot build the test image here: {exc}")


def qemu_dir() -> Path:
    """A directory the qemu user can traverse (pytest's tmp dirs are 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="novalite-qemu-", dir="/var/tmp"))
    path.chmod(0o755)
    return path


def config_drive(path: Path, meta: dict, user_data: bytes, files: dict[str, bytes]) -> None:
    """A minimal config drive: ISO 9660 + Rock Ridge + Joliet, label config-2."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="config-2")

    def add_file(iso_path: str, rr_path: str, data: bytes) -> None:
        iso.add_fp(io.BytesIO(data), len(data), iso_path + ";1", rr_name=rr_path.rsplit("/", 1)[1],
                   joliet_path=rr_path)

    iso.add_directory("/OPENSTAC", rr_name="openstack", joliet_path="/openstack")
    iso.add_directory("/OPENSTAC/LATEST", rr_name="latest", joliet_path="/openstack/latest")
    iso.add_directory("/OPENSTAC/CONTENT", rr_name="content", joliet_path="/openstack/content")
    meta = dict(meta, files=[])
    for i, (dest, data) in enumerate(files.items()):
        name = f"{i:04d}"
        add_file(f"/OPENSTAC/CONTENT/{name}", f"/openstack/content/{name}", data)
        meta["files"].append({"path": dest, "content_path": f"/content/{name}"})
    add_file("/OPENSTAC/LATEST/META_DAT.JSO", "/openstack/latest/meta_data.json", json.dumps(meta).encode())
    add_file("/OPENSTAC/LATEST/USER_DAT", "/openstack/latest/user_data", user_data)
    iso.write(str(path))
    iso.close()


def initramfs_files(image: testimage.TestImage) -> dict[str, bytes]:
    """The built initramfs's entries in archive order: name -> content (a newc cpio read back)."""
    data = gzip.decompress(image.ramdisk.read_bytes())
    files, i = {}, 0
    while True:
        assert data[i:i + 6] == b"070701"
        fields = [int(data[i + 6 + 8 * k:i + 14 + 8 * k], 16) for k in range(13)]
        namesize, filesize = fields[11], fields[6]
        name = data[i + 110:i + 110 + namesize - 1].decode()
        i += 110 + namesize
        i += -i % 4
        files[name] = data[i:i + filesize]
        i += filesize + (-filesize % 4)
        if name == "TRAILER!!!":
            return files


def test_initramfs_has_init_busybox_and_modules_in_dependency_order(test_image):
    names = list(initramfs_files(test_image))
    assert {"init", "bin/busybox", "bin/sh", "dev/console", "etc/udhcpc.script", "etc/run-script"} <= set(names)
    mods = [n.removeprefix("lib/modules/") for n in names if n.endswith(".ko")]
    for needed in ("virtio_pci.ko", "virtio_net.ko", "sr_mod.ko", "isofs.ko", "ata_piix.ko"):
        assert needed in mods
    # every module comes after the modules it depends on
    assert mods.index("virtio.ko") < mods.index("virtio_pci.ko")
    assert mods.index("cdrom.ko") < mods.index("sr_mod.ko")
    assert mods.index("libata.ko") < mods.index("ata_piix.ko")


def run_user_script(image: testimage.TestImage, work: Path, user_data: bytes) -> list[str]:
    """The console lines the image's own script runner prints for ``user_data``, run by the image's
    own busybox on this machine (what the guest's /init does after "init done", minus the VM)."""
    files = initramfs_files(image)
    busybox, runner = work / "busybox", work / "run-script"  # busybox picks its applet from its own name
    busybox.write_bytes(files["bin/busybox"])
    busybox.chmod(0o755)
    runner.write_bytes(files["etc/run-script"])
    (work / "user_data").write_bytes(user_data)
    res = subprocess.run([str(busybox), "sh", str(runner), str(work / "user_data")],
                         env={"PATH": os.environ["PATH"], "TMPDIR": str(work)}, capture_output=True, text=True,
                         timeout=30, check=True)
    assert res.stderr == ""
    return res.stdout.splitlines()


def test_user_data_script_output_is_prefixed_on_the_console_and_its_exit_code_follows(test_image, tmp_path):
    script = (b"#!/bin/sh\necho hello from the script\necho to stderr >&2\necho $((6*7))\n"
              b"(sleep 1; echo after the exit) &\nprintf 'no newline at the end'\nexit 3")
    assert run_user_script(test_image, tmp_path, script) == [
        "NOVALITE-GUEST: script: hello from the script",
        "NOVALITE-GUEST: script: to stderr",
        "NOVALITE-GUEST: script: 42",
        "NOVALITE-GUEST: script: no newline at the end",
        "NOVALITE-GUEST: script_exit=3",
        # what the script left in the background still reaches the console, prefixed
        "NOVALITE-GUEST: script: after the exit",
    ]


def test_user_data_script_that_cannot_run_reports_its_exit_code(test_image, tmp_path):
    lines = run_user_script(test_image, tmp_path, b"#!/no/such/interpreter\necho never\n")
    assert lines[-1] == "NOVALITE-GUEST: script_exit=127"
    assert all(line.startswith("NOVALITE-GUEST: script: ") for line in lines[:-1]) and "never" not in "".join(lines)


@pytest.mark.qemu
async def test_test_image_boots_under_tcg_and_reports_the_config_drive(test_image):
    try:
        conn = await asyncio.to_thread(libvirt.open, "qemu:///system")
    except libvirt.libvirtError as exc:
        pytest.skip(f"qemu:///system unavailable: {exc}")
    work = qemu_dir()
    instance_uuid = str(uuid.uuid4())
    iso = work / "disk.config"
    config_drive(
        iso,
        {"uuid": instance_uuid, "name": "tiny", "hostname": "tiny-host", "availability_zone": "nova",
         "launch_index": 0, "meta": {"role": "test"}},
        b"hello from user_data\npoweroff-after-boot\n",
        {"/etc/motd": b"injected-content"},
    )
    log = work / "console.log"
    spec = GuestSpec(
        instance_uuid=instance_uuid,
        name=f"novalite-testimage-{instance_uuid[:8]}",
        memory_mb=256,
        vcpus=1,
        disks=[DiskSpec(path=str(iso), device="cdrom", bus="sata", target_dev="sda", driver_type="raw")],
        nics=[NicSpec(mac="fa:16:3e:00:00:01")],  # usermode networking: qemu's own DHCP
        kernel=str(test_image.kernel),
        ramdisk=str(test_image.ramdisk),
        cmdline=test_image.cmdline,
        console_log_path=str(log),
    )
    xml = design_guest(spec, "qemu").to_xml()
    started = time.monotonic()
    dom = await asyncio.to_thread(conn.createXML, xml, 0)
    text = ""
    try:
        while time.monotonic() - started < 60:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "NOVALITE-GUEST: init done" in text:
                break
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        assert "NOVALITE-GUEST: init done" in text, text[-3000:]
        print(f"guest printed 'init done' {elapsed:.1f}s after createXML")
        assert f"NOVALITE-GUEST: uuid={instance_uuid}" in text
        assert "NOVALITE-GUEST: hostname=tiny-host" in text
        assert "NOVALITE-GUEST: user_data=hello from user_data" in text
        assert "NOVALITE-GUEST: file /etc/motd=injected-content" in text
        assert "NOVALITE-GUEST: lease ip=10.0.2.15 mac=fa:16:3e:00:00:01" in text
        assert "NOVALITE-GUEST: addr iface=eth0 ip=10.0.2.15 prefix=24 mac=fa:16:3e:00:00:01" in text
        assert "script_exit" not in text  # plain user_data is no script
        # poweroff-after-boot: the transient domain goes away by itself
        for _ in range(50):
            try:
                await asyncio.to_thread(dom.info)
            except libvirt.libvirtError:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("guest did not power off")
    finally:
        try:
            await asyncio.to_thread(dom.destroy)
        except libvirt.libvirtError:
            pass
        await asyncio.to_thread(conn.close)
        shutil.rmtree(work, ignore_errors=True)


async def test_build_test_cli_uploads_kernel_ramdisk_and_ami_through_the_api(cloud, test_image):
    proc = await asyncio.create_subprocess_exec(
        str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "novalite"),
        "--config", str(cloud.workdir / "config.toml"), "image", "build-test", "--cache-dir", str(CACHE),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        # this checkout's novalite, not the one the shared venv was installed from (its INIT may differ)
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()
    status, body, _ = await cloud.request("GET", "/image/v2/images?os_distro=novalite-test&sort_key=name&sort_dir=asc")
    images = {i["name"]: i for i in body["images"]}
    assert set(images) >= {"novalite-test", "novalite-test-kernel", "novalite-test-ramdisk"}
    kernel, ramdisk, ami = images["novalite-test-kernel"], images["novalite-test-ramdisk"], images["novalite-test"]
    assert (kernel["disk_format"], kernel["container_format"], kernel["status"]) == ("aki", "aki", "active")
    assert (ramdisk["disk_format"], ramdisk["container_format"]) == ("ari", "ari")
    assert ami["disk_format"] == "ami" and ami["visibility"] == "public"
    assert ami["kernel_id"] == kernel["id"] and ami["ramdisk_id"] == ramdisk["id"]
    assert ami["os_command_line"].startswith("console=ttyS0")
    assert kernel["size"] == test_image.kernel.stat().st_size
    if "novalite-test-qcow2" in images:
        assert images["novalite-test-qcow2"]["kernel_id"] == kernel["id"]
    store = cloud.app[keys.IMAGE_STORE]
    assert store.path(ramdisk["id"]).read_bytes() == test_image.ramdisk.read_bytes()
    for kind in ("novalite-test", "novalite-test-kernel", "novalite-test-ramdisk"):
        assert kind in out.decode()
