"""The dashboard's serial console against a real guest: a browser (Debian's headless chromium)
logs in, opens the instance's page, connects its terminal (xterm.js over the console websocket,
127.0.0.1 only) and types into the test guest's shell; the answer shows in the terminal's rows."""

from __future__ import annotations

import asyncio
import re
import secrets

import pytest
from conftest import wait_for_status
from test_console import boot
from test_dashboard_browser import (
    CHROMEDRIVER,
    CHROMIUM,
    chrome,
    csp_violations,
    login,
    text_of,
    wait,
)
from test_guest_e2e import qemu_cloud, test_image, wait_console  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="Debian's chromium and chromium-driver are not installed")


def type_in_terminal(browser, url: str, server_id: str, number: int) -> str:
    """Connect the page's terminal, wake the shell, run ``echo dash-$((number+1))``; the rows' text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    browser.get(f"{url}/dashboard/instances/{server_id}")
    browser.find_element(By.ID, "console-connect").click()
    wait(browser, lambda b: text_of(b, "#console-status") == "Connected.")
    keyboard = browser.find_element(By.CSS_SELECTOR, "#terminal .xterm-helper-textarea")
    keyboard.send_keys(Keys.ENTER)
    # the guest's shell prompt ends a row ("# ": the driver's text drops the row's trailing space)
    wait(browser, lambda b: re.search(r"#\s*$", text_of(b, "#terminal .xterm-rows"), re.M))
    keyboard.send_keys(f"echo dash-$(({number}+1))" + Keys.ENTER)
    return wait(browser, lambda b: f"dash-{number + 1}" in (rows := text_of(b, "#terminal .xterm-rows")) and rows)


@pytest.mark.qemu
async def test_typing_into_the_guest_from_the_instance_page(pg_dsn, test_image, tmp_path):  # noqa: F811
    async with qemu_cloud(pg_dsn, test_image, prefix="nldash") as cloud:
        server = await boot(cloud, "dash-console", cloud.image_ids["ami"])
        assert (await wait_for_status(cloud, server, {"ACTIVE", "ERROR"}, timeout=120))["status"] == "ACTIVE"
        await wait_console(cloud, server, "NOVALITE-GUEST: console shell: press Enter", timeout=90)
        browser = await asyncio.to_thread(chrome, tmp_path)
        try:
            await asyncio.to_thread(login, browser, cloud.url, "demo", cloud.creds["demo"])
            number = secrets.randbelow(10**6)
            rows = await asyncio.to_thread(type_in_terminal, browser, cloud.url, server, number)
            assert f"echo dash-$(({number}+1))" in rows  # the typed line echoed, then its answer
            assert not csp_violations(browser)
        finally:
            await asyncio.to_thread(browser.quit)
