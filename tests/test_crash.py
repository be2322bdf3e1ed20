"""kill -9 of the real server in boot stages, on hosts that outlive it (bench/crash_test.py, a few kills)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "crash_test.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("crash_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_sigkill_in_scheduling_spawning_and_deleting_loses_nothing(pg_dsn, tmp_path):
    bench = load_bench()
    bench.STAGES[:] = ["scheduling", "spawning", "deleting"]
    counts, failures = await bench.run(3, seed=3, servers=3, admin_dsn=pg_dsn, hosts=1, workdir=tmp_path,
                                       verbose=False)
    assert failures == []
    assert counts["checks"] == 6
    assert counts["recovered_build_rescheduled"] >= 1
    assert counts["recovered_build_finished"] >= 1
    assert counts["recovered_delete_finished"] >= 1


async def test_sigkill_during_rebuilds_loses_nothing(pg_dsn, tmp_path):
    """A rebuild cut off after its spawn is redone from its first step on restart."""
    bench = load_bench()
    bench.STAGES[:] = ["rebuild_spawning"]
    counts, failures = await bench.run(1, seed=4, servers=3, admin_dsn=pg_dsn, hosts=1, workdir=tmp_path,
                                       verbose=False)
    assert failures == []
    assert counts["recovered_rebuild_resumed"] >= 1


async def test_sigkill_during_resizes_loses_nothing(pg_dsn, tmp_path):
    """A resize cut off while the destination defines the guest is finished on restart (VERIFY_RESIZE),
    its claims held as before: the destination's by the instance, the source's by the migration."""
    bench = load_bench()
    bench.STAGES[:] = ["resize_finish"]
    counts, failures = await bench.run(1, seed=6, servers=3, admin_dsn=pg_dsn, hosts=2, workdir=tmp_path,
                                       verbose=False)
    assert failures == []
    assert counts["recovered_resize_resumed"] >= 1


async def test_sigkill_during_rescue_and_unrescue_loses_nothing(pg_dsn, tmp_path):
    """A rescue cut off is rolled back to the server's own guest; an unrescue cut off is finished."""
    bench = load_bench()
    bench.STAGES[:] = ["rescuing", "unrescuing"]
    counts, failures = await bench.run(2, seed=6, servers=3, admin_dsn=pg_dsn, hosts=1, workdir=tmp_path,
                                       verbose=False)
    assert failures == []
    assert counts["recovered_rescue_rolled_back"] >= 1
    assert counts["recovered_unrescue_finished"] >= 1


async def test_sigkill_during_a_real_guests_spawn_loses_nothing(pg_dsn):
    """The same drill with a real TCG guest on qemu:///system in the batch."""
    bench = load_bench()
    bench.STAGES[:] = ["spawning"]
    counts, failures = await bench.run(1, seed=5, servers=2, admin_dsn=pg_dsn, hosts=1, verbose=False, qemu=True)
    assert failures == []
    assert counts["checks"] == 2
    assert counts["instances_interrupted"] >= 1


async def test_sigkill_during_snapshots_loses_nothing(pg_dsn, tmp_path):
    """A snapshot cut off mid-way is taken again on restart: every accepted image ends active."""
    bench = load_bench()
    bench.STAGES[:] = ["image_uploading"]
    counts, failures = await bench.run(1, seed=6, servers=3, admin_dsn=pg_dsn, hosts=1, workdir=tmp_path,
                                       verbose=False)
    assert failures == []
    assert counts["recovered_snapshot_resumed"] >= 1


async def test_sigkill_during_shelve_and_unshelve_loses_nothing(pg_dsn, tmp_path):
    """A shelve cut off while uploading is shelved again; an unshelve cut off while spawning spawns
    again on its claim: every server ends offloaded with an active image, or active again."""
    bench = load_bench()
    bench.STAGES[:] = ["shelving_image_uploading", "unshelve_spawning"]
    counts, failures = await bench.run(2, seed=7, servers=2, admin_dsn=pg_dsn, hosts=1, workdir=tmp_path,
                                       verbose=False)
    assert failures == []
    assert counts["recovered_shelve_resumed"] >= 1
    assert counts["recovered_unshelve_resumed"] >= 1


async def test_sigkill_during_live_migrations_loses_nothing(pg_dsn, tmp_path):
    """A live migration cut off while ``running`` (the guest still on its source) is rolled back on
    restart: the guest stays there, its claim is the instance's again, nothing is left on the other host."""
    bench = load_bench()
    bench.STAGES[:] = ["live_migrating"]
    counts, failures = await bench.run(1, seed=8, servers=3, admin_dsn=pg_dsn, hosts=2, workdir=tmp_path,
                                       verbose=False)
    assert failures == []
    assert counts["recovered_live_migration_rolled_back"] >= 1
