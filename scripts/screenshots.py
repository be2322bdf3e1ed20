#!/usr/bin/env python3
"""Screenshots of the dashboard for the README: docs/screenshots/*.png.

Starts `novalite serve` on three simulated hosts of different sizes (an embedded
Postgres; bench/dashboard.py's admin_cloud, bench/boot_storm.py's config), boots a few servers
of several flavors into the admin project, then drives Debian's headless
chromium (Selenium, chromium-driver) through the dashboard as admin and saves:
instances.png (the list), launch.png (the form), instance.png (an instance page
with its boot timeline and scheduler verdicts) and hypervisors.png (usage bars).

Usage: scripts/screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from boot_storm import PATHS, any_building, write_config  # noqa: E402  (the storm's config helpers)
from dashboard import admin_cloud  # noqa: E402  (bench/dashboard.py: the server with an image)

HOSTS = (("lab1", 4, 8192, 80), ("lab2", 16, 32768, 400), ("lab3", 8, 16384, 200))  # name, vCPU, MB, GB
SERVERS = (("big-1", "5"), ("web-1", "2"), ("web-2", "2"), ("web-3", "2"), ("db-1", "4"), ("cache-1", "3"),
           ("worker-1", "3"), ("build-1", "4"), ("lab-vm", "1"))  # name, flavor
WIDTH, HEIGHT = 1280, 760


def lab_config(root: Path, dsn: str, port: int) -> Path:
    """The storm's real-path config with no hosts of its own, and three hosts of different sizes."""
    config = write_config(root, dsn, 0, port, PATHS["real"], len(SERVERS))
    hosts = "".join(f'\n[[hosts]]\nname = "{name}"\nsimulate = {{ vcpus = {cpu}, memory_mb = {mem}, disk_gb = {disk} }}\n'
                    for name, cpu, mem, disk in HOSTS)
    config.write_text(config.read_text() + hosts)
    return config


async def boot(session: aiohttp.ClientSession, url: str, headers: dict, image: str) -> str:
    """SERVERS, one create each; waits until none is building. Returns big-1's id (a host refused it)."""
    ids = {}
    for name, flavor in SERVERS:
        body = {"server": {"name": name, "imageRef": image, "flavorRef": flavor, "networks": "auto"}}
        async with session.post(f"{url}/compute/v2.1/servers", json=body,
                                headers={**headers, "OpenStack-API-Version": "compute latest"}) as r:
            assert r.status == 202, await r.text()
            ids[name] = (await r.json())["server"]["id"]
    while await any_building(session, url, headers):
        await asyncio.sleep(0.2)
    return ids["big-1"]


def shoot(url: str, password: str, server_id: str, out: Path) -> list[Path]:
    """Log in as admin in headless chromium and save the four pages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--window-size={WIDTH},{HEIGHT}"):
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")
    browser = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    saved = []
    try:
        browser.get(url + "/dashboard/login")
        for field, value in (("user", "admin"), ("password", password), ("project", "admin")):
            browser.find_element(By.ID, field).send_keys(value)
        browser.find_element(By.ID, "login").click()
        pages = {"instances": "/dashboard/instances", "launch": "/dashboard/instances/launch",
                 "instance": f"/dashboard/instances/{server_id}", "hypervisors": "/dashboard/admin/hypervisors"}
        for name, path in pages.items():
            browser.get(url + path)
            height = HEIGHT
            if name == "instance":  # the whole page: overview, timeline, verdicts
                height = min(2400, browser.execute_script("return document.documentElement.scrollHeight;"))
            browser.set_window_size(WIDTH, height)
            saved.append(out / f"{name}.png")
            browser.find_element(By.TAG_NAME, "body").screenshot(str(saved[-1]))
            browser.set_window_size(WIDTH, HEIGHT)
    finally:
        browser.quit()
    return saved


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    async with admin_cloud("novalite-screenshots-", lab_config) as cloud:
        server_id = await boot(cloud.session, cloud.url, cloud.headers, cloud.image)
        saved = await asyncio.to_thread(shoot, cloud.url, cloud.creds["admin"], server_id, args.out)
    for path in saved:
        print(f"{path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
