"""The scale benchmark stays runnable: a small lived database (2,000 instances), every stage run once,
then measured again on the kept database (--state); the figures are not asserted (a noisy machine),
what the bench reports is."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


SMALL = ("--instances", "2000", "--live", "400", "--hosts", "10", "--storm", "10", "-c", "5", "--samples", "5")


async def scale(*options: str, timeout: float = 180) -> str:
    """bench/scale.py's output with these options (the run must succeed)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "bench" / "scale.py"), *options,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    text = out.decode()
    assert proc.returncode == 0, err.decode()[-2000:] + text
    return text


async def test_scale_bench_runs_on_a_small_lived_database(tmp_path):
    text = await scale(*SMALL, "--state", str(tmp_path))
    head = json.loads(text.splitlines()[-1])
    assert head["bench"] == "scale" and head["instances"] == 2001  # the clones and their template
    assert set(head) == {"bench", "instances", "list_p99_ms", "detail_p99_ms", "restart_s", "peak_rss_mb",
                         "storm_active_per_s"}
    assert head["storm_active_per_s"] > 0 and head["restart_s"] > 0
    # every page of the admin's list was walked: 400 live + the template, 100 a page
    assert any(line.startswith("admin all_tenants") and line.split()[2] == "5" for line in text.splitlines()), text
    # every filter's plan is shown (whether it scans the whole instances table, and its time)
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("filter (EXPLAIN"))
    end = next(i for i, line in enumerate(lines) if line.startswith("scheduling decision"))
    assert end - start - 1 >= 20 and all(line.split()[-2] in ("YES", "no") for line in lines[start + 1:end]), text

    # --state kept it: a second run measures the same database again without loading it
    again = await scale(*SMALL, "--state", str(tmp_path), "--no-storm", "--no-plans", timeout=120)
    assert "by an earlier run" in again.splitlines()[0], again
    head = json.loads(again.splitlines()[-1])
    assert head["instances"] > 2001 and head["restart_s"] > 0 and head["storm_active_per_s"] is None  # + the storm's
