"""The boot storm benchmark stays runnable on both paths (a tiny storm; the figures are not asserted)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


async def test_boot_storm_bench_runs_clean_on_a_tiny_storm():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "bench" / "boot_storm.py"), "-n", "20", "--hosts", "4", "-c", "5",
        "--batch", "5", "--no-small", "--path", "both",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=240)
    text = out.decode()
    assert proc.returncode == 0, err.decode()[-2000:] + text
    rows = [line for line in text.splitlines() if line.split()[1:2] == ["20"]]
    # per path (the user's and the minimal one), a row for single POSTs and one for multi-create batches
    assert sorted(row.split()[0] for row in rows) == ["minimal", "minimal", "real", "real"], text
    for row in rows:
        assert row.split("|")[-2].split() == ["0", "0", "0"]  # errors, oversubscribed hosts, open actions
