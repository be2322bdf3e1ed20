"""The Debian cloud image (``novalite image build-cloud``) boots and cloud-init does its work.

Two TCG guests boot in parallel with a keypair and ``#cloud-config`` user_data, one reading
the metadata service at 169.254.169.254 (no config drive), one a config drive. Its runcmd prints
what cloud-init did (hostname, the written file, the default user's authorized_keys) on the serial
console; the test reads it through the API's console log, with cloud-init's final message. Nothing
is sent from the host to a guest. Slow (a Debian userland under TCG, ~3 min): in ``make e2e``
(and CI), alone with ``make e2e-cloud``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from pathlib import Path

import pytest
from conftest import wait_for_status
from test_guest_e2e import qemu_cloud, test_image, wait_console  # noqa: F401 (test_image: a fixture)

from novalite.image import cloudimage

pytestmark = [pytest.mark.qemu, pytest.mark.cloudimage]

CACHE = Path(os.environ.get("NOVALITE_CLOUD_IMAGE_CACHE", cloudimage.DEFAULT_CACHE))
BOOT_TIMEOUT = 600  # cloud-init's final message under TCG, two guests on two cores

USER_DATA = """#cloud-config
write_files:
  - path: /etc/novalite-proof
    content: "written-by-cloud-init\\n"
runcmd:
  - [sh, -c, 'for l in "hostname=$(hostname)" "file=$(cat /etc/novalite-proof)" "keys=$(tr "\\n" " " < /home/debian/.ssh/authorized_keys)"; do echo "NOVALITE-CLOUD: $l" > /dev/ttyS0; done']
"""


@pytest.fixture(scope="module")
def cloud_image() -> cloudimage.CloudImage:
    start = time.monotonic()
    try:
        image = cloudimage.build(CACHE)
    except cloudimage.BuildError as exc:
        pytest.skip(f"cannot build the Debian cloud image here: {exc}")
    print(f"cloud image ready in {time.monotonic() - start:.1f}s")
    return image


async def build_cloud_cli(cloud) -> dict[str, str]:
    """``novalite image build-cloud`` (the image is cached by now): its progress and the uploaded ids."""
    proc = await asyncio.create_subprocess_exec(
        str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "novalite"),
        "--config", str(cloud.workdir / "config.toml"), "image", "build-cloud", "--cache-dir", str(CACHE),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)),  # this checkout's novalite
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=300)
    assert proc.returncode == 0, err.decode()
    assert "debian-12-cloud: cached in" in err.decode() and "uploading debian-12-cloud" in err.decode()
    by_name = dict(line.split() for line in out.decode().splitlines())
    return {kind: by_name[name] for kind, name in cloudimage.NAMES.items()}


async def boot_and_prove(cloud, image_id: str, name: str, config_drive: bool, public_key: str) -> None:
    """Boot ``name`` and check from its console what cloud-init did (printing how long it took)."""
    start = time.monotonic()
    status, body, _ = await cloud.compute("POST", "/servers", json_body={"server": {
        "name": name, "imageRef": image_id, "flavorRef": "1", "key_name": "cloudkey",
        "user_data": base64.b64encode(USER_DATA.encode()).decode(), "config_drive": config_drive,
    }})
    assert status == 202, body
    server_id = body["server"]["id"]
    server = await wait_for_status(cloud, server_id, {"ACTIVE", "ERROR"}, timeout=180)
    assert server["status"] == "ACTIVE", server.get("fault")
    text = await wait_console(cloud, server_id, " finished at ", timeout=BOOT_TIMEOUT)
    elapsed = time.monotonic() - start
    print(f"{name}: create to cloud-init's final message in {elapsed:.0f}s")
    assert "Cloud-init v. " in text
    source = "ConfigDrive" if config_drive else "OpenStack"  # OpenStackLocal when found before networking
    assert f"Datasource DataSource{source}" in text, text[-3000:]
    assert f"NOVALITE-CLOUD: hostname={name}" in text
    assert "NOVALITE-CLOUD: file=written-by-cloud-init" in text
    assert public_key.split()[1] in text.split("NOVALITE-CLOUD: keys=", 1)[1].split("\n", 1)[0]
    status, _, _ = await cloud.compute("DELETE", f"/servers/{server_id}")
    assert status == 204
    await wait_for_status(cloud, server_id, "DELETED", timeout=60)


async def test_cloud_image_runs_cloud_init_from_the_metadata_service_and_a_config_drive(
        pg_dsn, test_image, cloud_image):  # noqa: F811
    async with qemu_cloud(pg_dsn, test_image, prefix="nlcimg") as cloud:
        ids = await build_cloud_cli(cloud)
        status, image, _ = await cloud.request("GET", f"/image/v2/images/{ids['qcow2']}")
        assert status == 200 and image["name"] == "debian-12-cloud", image
        assert image["os_distro"] == "debian" and image["hw_qemu_guest_agent"] == "no"
        assert image["kernel_id"] == ids["kernel"] and image["ramdisk_id"] == ids["ramdisk"]
        status, kp, _ = await cloud.compute("POST", "/os-keypairs", json_body={"keypair": {"name": "cloudkey"}})
        assert status == 200, kp
        public_key = kp["keypair"]["public_key"]
        await asyncio.gather(
            boot_and_prove(cloud, ids["qcow2"], "cloud-md", False, public_key),
            boot_and_prove(cloud, ids["qcow2"], "cloud-cd", True, public_key),
        )
