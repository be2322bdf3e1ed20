"""A real TCG guest booted through the API runs its "#!" user_data as a script.

Like cloud-init, the test guest treats a user_data that starts with ``#!`` as a
script: it runs it after ``init done``, in the background, and its output
reaches the serial console prefixed ``NOVALITE-GUEST: script: ``, followed by
``NOVALITE-GUEST: script_exit=<code>``. The test reads it as a user does,
through ``os-getConsoleOutput``. Nothing sends traffic from the host to the guest.
"""

from __future__ import annotations

import base64
import re

import pytest
from conftest import wait_for_status
from test_guest_e2e import guest_cloud, test_image, wait_console  # noqa: F401, F811  (fixtures of the qemu tests)

pytestmark = pytest.mark.qemu

SCRIPT = """#!/bin/sh
echo "hello from a user_data script"
echo $((6*7))
nc -l -p 8080 -w 5 &
sleep 1
kill $!
exit 3
"""


def script_lines(console_text: str) -> list[str]:
    """What the guest's user_data script printed, in order (the prefix removed)."""
    return re.findall(r"^NOVALITE-GUEST: script: (.*?)\r?$", console_text, re.M)


async def boot_with_script(cloud, name: str, script: str, **server) -> str:
    """Boot one test guest through the API with ``script`` as its user_data; its id once ACTIVE."""
    status, body, _ = await cloud.compute("POST", "/servers", json_body={"server": {
        "name": name, "imageRef": cloud.image_ids["ami"], "flavorRef": "1", "config_drive": True,
        "user_data": base64.b64encode(script.encode()).decode(), "networks": "auto", **server}}, version="2.37")
    assert status == 202, body
    server_id = body["server"]["id"]
    found = await wait_for_status(cloud, server_id, {"ACTIVE", "ERROR"}, timeout=180)
    assert found["status"] == "ACTIVE", found.get("fault")
    return server_id


async def test_guest_runs_a_shell_script_user_data_and_shows_its_output_and_exit_code(guest_cloud):  # noqa: F811
    cloud = guest_cloud
    server_id = await boot_with_script(cloud, "scripted", SCRIPT)
    try:
        text = await wait_console(cloud, server_id, "NOVALITE-GUEST: script_exit=")
        assert "NOVALITE-GUEST: script_exit=3" in text, text[-2000:]
        assert script_lines(text)[:2] == ["hello from a user_data script", "42"]
        # The script ran after the boot report, and the guest's address is on the console too.
        assert text.index("NOVALITE-GUEST: init done") < text.index("NOVALITE-GUEST: script: 42")
        server = await wait_for_status(cloud, server_id, "ACTIVE")
        (addr,) = server["addresses"]["lab"]
        assert f"NOVALITE-GUEST: addr iface=eth0 ip={addr['addr']} " in text
        # The guest keeps running after its script ended.
        assert (await wait_for_status(cloud, server_id, "ACTIVE"))["OS-EXT-STS:power_state"] == 1
    finally:
        status, _, _ = await cloud.compute("DELETE", f"/servers/{server_id}")
        assert status == 204
        await wait_for_status(cloud, server_id, "DELETED", timeout=60)
