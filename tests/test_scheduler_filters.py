"""Each filter and weigher on its own, on HostState objects (no database)."""

from __future__ import annotations

import pytest

from novalite.config import SchedulerConfig
from novalite.scheduler import filters as f
from novalite.scheduler import weighers as w
from novalite.scheduler.host_state import HostColumns, HostList, HostState, column
from novalite.scheduler.manager import NoValidHost, Scheduler, Verdicts


def host(name: str = "h1", **kw) -> HostState:
    values = dict(
        host=name, nodename=name, availability_zone="nova", vcpus=8, memory_mb=4096, local_gb=100,
        vcpus_used=0, memory_mb_used=0, disk_gb_used=0, disabled=False, disabled_reason=None, up=True,
        hypervisor_type="QEMU", cpu_arch="x86_64", cpu_allocation_ratio=1.0, ram_allocation_ratio=1.0,
        disk_allocation_ratio=1.0, reserved_host_memory_mb=0, reserved_host_disk_mb=0,
    )
    values.update(kw)
    return HostState(**values)


def spec(vcpus: int = 1, ram: int = 512, root: int = 1, eph: int = 0, swap: int = 0, extra_specs=None, **kw) -> dict:
    out = {"flavor": {"name": "f", "vcpus": vcpus, "memory_mb": ram, "root_gb": root, "ephemeral_gb": eph,
                      "swap": swap, "extra_specs": extra_specs or {}},
           "image": {"properties": {}}, "scheduler_hints": {}, "retry": {"hosts": []}}
    out.update(kw)
    return out


def passes(flt: f.BaseFilter, h: HostState, s: dict) -> str | None:
    """host_passes, checked against the batch path filter_all so both agree."""
    reason = flt.host_passes(h, s)
    kept, removed = flt.filter_all([h], s)
    assert (kept == [h]) == (reason is None)
    assert removed == ([] if reason is None else [(h, reason)])
    return reason


def test_retry_filter_skips_hosts_already_tried():
    s = spec(retry={"hosts": ["h1"]})
    assert passes(f.RetryFilter(), host("h1"), s) == "host already tried for this build"
    assert passes(f.RetryFilter(), host("h2"), s) is None


def test_availability_zone_filter():
    assert passes(f.AvailabilityZoneFilter(), host(availability_zone="az2"), spec(availability_zone="az1")) == (
        "availability zone az2 != az1")
    assert passes(f.AvailabilityZoneFilter(), host(availability_zone="az2"), spec()) is None


def test_compute_filter_explains_disabled_and_down():
    assert passes(f.ComputeFilter(), host(disabled=True, disabled_reason="maintenance"), spec()) == (
        "service disabled (maintenance)")
    assert passes(f.ComputeFilter(), host(disabled=True), spec()) == "service disabled"
    assert passes(f.ComputeFilter(), host(up=False), spec()) == "service down"
    assert passes(f.ComputeFilter(), host(), spec()) is None


def test_ram_filter_applies_ratio_and_reserved_memory():
    h = host(memory_mb=2048, ram_allocation_ratio=1.5, reserved_host_memory_mb=512, memory_mb_used=1024)
    assert h.free_ram_mb == 1536
    assert passes(f.RamFilter(), h, spec(ram=1536)) is None
    assert passes(f.RamFilter(), h, spec(ram=1537)) == "free RAM 1536 MB < 1537 MB requested"


def test_core_filter_applies_ratio():
    h = host(vcpus=2, cpu_allocation_ratio=4.0, vcpus_used=6)
    assert passes(f.CoreFilter(), h, spec(vcpus=2)) is None
    assert passes(f.CoreFilter(), h, spec(vcpus=3)) == "free vCPUs 2 < 3 requested"


def test_disk_filter_counts_root_ephemeral_swap_and_reserved_disk():
    h = host(local_gb=10, reserved_host_disk_mb=2048)
    assert passes(f.DiskFilter(), h, spec(root=5, eph=2, swap=1024)) is None  # 8 GB of 8
    assert passes(f.DiskFilter(), h, spec(root=5, eph=2, swap=1025)) == "free disk 8 GB < 9 GB requested"


def test_image_properties_filter():
    flt = f.ImagePropertiesFilter()
    image = {"properties": {"hw_architecture": "aarch64"}}
    assert passes(flt, host(), spec(image=image)) == "image wants arch=aarch64, host runs x86_64/qemu/hvm; x86_64/kvm/hvm"
    assert passes(flt, host(), spec(image={"properties": {"hw_architecture": "amd64", "img_hv_type": "kvm"}})) is None
    assert "vm_mode=xen" in passes(flt, host(), spec(image={"properties": {"hw_vm_mode": "xen"}}))
    assert passes(flt, host(cpu_arch="aarch64"), spec()) is None  # no image properties: anything goes
    versioned = spec(image={"properties": {"img_hv_type": "qemu", "img_hv_requested_version": ">=8.0"}})
    assert passes(flt, host(hypervisor_version=8002000), versioned) is None
    assert passes(flt, host(hypervisor_version=6002000), versioned) == "hypervisor version 6.2.0 does not satisfy >=8.0"
    assert passes(f.ImagePropertiesFilter("aarch64"), host(), spec()) is not None  # default architecture


def test_compute_capabilities_filter():
    flt = f.ComputeCapabilitiesFilter()
    ok = spec(extra_specs={"capabilities:hypervisor_type": "s== QEMU", "capabilities:cpu_arch": "x86_64",
                           "capabilities:vcpus": ">= 8", "hw:cpu_policy": "shared", "quota:cpu_shares": "10"})
    assert passes(flt, host(), ok) is None
    assert passes(flt, host(), spec(extra_specs={"capabilities:vcpus": ">= 16"})) == (
        "capabilities:vcpus: 8 does not match '>= 16'")
    assert passes(flt, host(), spec(extra_specs={"cpu_arch": "<or> aarch64 <or> ppc64le"})) is not None
    assert passes(flt, host(), spec(extra_specs={"capabilities:nonesuch": "1"})) == (
        "capabilities:nonesuch: host reports no nonesuch")


@pytest.mark.parametrize(
    "value, req, expected",
    [
        ("8", "= 4", True), ("2", "= 4", False), ("x86_64", "x86_64", True), ("a b c", "<in> b", True),
        ("a b c", "<all-in> a c", True), ("a b", "<all-in> a z", False), ("QEMU", "<or> KVM <or> QEMU", True),
        ("QEMU", "s!= QEMU", False), ("4", "!= 4", False), ("abc", "s< abd", True), (None, "= 1", False),
    ],
)
def test_extra_spec_operators(value, req, expected):
    assert f.extra_spec_matches(value, req) is expected


def test_aggregate_filter_is_a_no_op_that_says_why_it_refuses():
    flt = f.AggregateInstanceExtraSpecsFilter()
    assert passes(flt, host(), spec(extra_specs={"hw:numa_nodes": "1"})) is None
    reason = passes(flt, host(), spec(extra_specs={"aggregate_instance_extra_specs:ssd": "true"}))
    assert "no host aggregates" in reason


def test_numa_topology_filter():
    flt = f.NUMATopologyFilter()
    assert passes(flt, host(), spec(vcpus=2, extra_specs={"hw:numa_nodes": "2"})) == "hw:numa_nodes=2 > 1 host NUMA cell"
    assert passes(flt, host(numa_cells=2), spec(vcpus=2, extra_specs={"hw:numa_nodes": "2"})) is None
    assert passes(flt, host(numa_cells=2, memory_mb=1024), spec(vcpus=2, ram=2048, extra_specs={"hw:numa_nodes": "1"})) == (
        "guest NUMA cell of 2048 MB > host cell of 512 MB")
    assert passes(flt, host(), spec()) is None


def group(policy: str, hosts: dict, **rules) -> dict:
    return {"uuid": "g1", "policy": policy, "rules": rules, "hosts": hosts}


def test_affinity_filter():
    flt = f.ServerGroupAffinityFilter()
    s = spec(group=group("affinity", {"h1": 2}))
    assert passes(flt, host("h1"), s) is None
    assert passes(flt, host("h2"), s) == "server group g1 (affinity) is on h1"
    assert passes(flt, host("h2"), spec(group=group("affinity", {}))) is None  # first member: anywhere
    assert passes(flt, host("h2"), spec(group=group("anti-affinity", {"h1": 1}))) is None


def test_anti_affinity_filter_with_max_server_per_host():
    flt = f.ServerGroupAntiAffinityFilter()
    assert passes(flt, host("h1"), spec(group=group("anti-affinity", {"h1": 1}))) == (
        "server group g1 (anti-affinity) has 1 member here, max_server_per_host 1")
    assert passes(flt, host("h2"), spec(group=group("anti-affinity", {"h1": 1}))) is None
    two = spec(group=group("anti-affinity", {"h1": 1}, max_server_per_host=2))
    assert passes(flt, host("h1"), two) is None
    two["group"]["hosts"]["h1"] = 2
    assert passes(flt, host("h1"), two) is not None


def test_same_and_different_host_hints():
    hints = {"same_host": ["u1"], "different_host": "u1"}
    resolved = spec(scheduler_hints=hints, hint_hosts={"u1": "h1"})
    assert passes(f.SameHostFilter(), host("h1"), resolved) is None
    assert passes(f.SameHostFilter(), host("h2"), resolved) == "none of the same_host instances is on this host"
    assert passes(f.DifferentHostFilter(), host("h1"), resolved) == "an instance named in different_host is on this host"
    assert passes(f.DifferentHostFilter(), host("h2"), resolved) is None
    # Without resolution, the host's own instance list answers (Nova's way).
    raw = spec(scheduler_hints=hints)
    assert passes(f.SameHostFilter(), host("h1", instance_uuids={"u1"}), raw) is None
    assert passes(f.DifferentHostFilter(), host("h1", instance_uuids={"u1"}), raw) is not None
    assert passes(f.SameHostFilter(), host("h1"), spec()) is None


def test_unknown_filter_names_fail_at_start():
    with pytest.raises(ValueError, match="unknown scheduler filters: Nope"):
        f.build_filters(["RamFilter", "Nope"])


# -- weighers --------------------------------------------------------------------------

def test_normalize_as_nova():
    assert w.normalize([]) == []
    assert w.normalize([5, 5]) == [0.0, 0.0]
    assert w.normalize([1, 3, 2]) == [0.0, 1.0, 0.5]


def test_ram_cpu_disk_weighers_spread_and_multipliers_stack():
    big, small = host("big", memory_mb=8192, vcpus=16, local_gb=200), host("small")
    cfg = SchedulerConfig()
    for name in ("RAMWeigher", "CPUWeigher", "DiskWeigher"):
        ranked = w.weigh_hosts(w.build_weighers([name]), cfg, [small, big], spec())
        assert [h.host for h, _ in ranked] == ["big", "small"] and ranked[0][1] == 1.0
    stack = SchedulerConfig(ram_weight_multiplier=-1.0)
    ranked = w.weigh_hosts(w.build_weighers(["RAMWeigher"]), stack, [big, small], spec())
    assert [h.host for h, _ in ranked] == ["small", "big"]


def test_build_failure_weigher_sinks_hosts_that_failed():
    cfg = SchedulerConfig()
    hosts = [host("bad", memory_mb=65536, failed_builds=2), host("good")]
    ranked = w.weigh_hosts(w.build_weighers(["RAMWeigher", "BuildFailureWeigher"]), cfg, hosts, spec())
    assert [h.host for h, _ in ranked] == ["good", "bad"]
    assert ranked[0][1] == 1_000_000.0
    assert w.BuildFailureWeigher().weigh(host(failed_builds=3), spec()) == -3


def test_soft_group_weighers():
    hosts = [host("h1"), host("h2"), host("h3")]
    cfg = SchedulerConfig()
    weighers = w.build_weighers(["ServerGroupSoftAffinityWeigher", "ServerGroupSoftAntiAffinityWeigher"])
    soft = spec(group=group("soft-affinity", {"h2": 2, "h3": 1}))
    assert [h.host for h, _ in w.weigh_hosts(weighers, cfg, hosts, soft)] == ["h2", "h3", "h1"]
    anti = spec(group=group("soft-anti-affinity", {"h1": 2, "h2": 1}))
    assert [h.host for h, _ in w.weigh_hosts(weighers, cfg, hosts, anti)] == ["h3", "h2", "h1"]
    assert all(weight == 0 for _, weight in w.weigh_hosts(weighers, cfg, hosts, spec()))


# -- the decision and its explanation ---------------------------------------------------

def test_verdicts_explain_counts_per_filter_and_fits_a_fault_message():
    v = Verdicts(num_hosts=3, rejected=[
        ("h3", "AvailabilityZoneFilter", "availability zone az2 != az1"),
        ("h1", "RamFilter", "free RAM 512 MB < 4096 MB requested"),
        ("h2", "RamFilter", "free RAM 1024 MB < 4096 MB requested"),
    ])
    assert v.explain() == ("3 hosts; AvailabilityZoneFilter removed 1 (availability zone az2 != az1); "
                           "RamFilter removed 2 (free RAM 512 MB < 4096 MB requested, ...)")
    many = Verdicts(num_hosts=40, rejected=[(f"h{i}", f"Filter{i % 9}", "x" * 60 + str(i)) for i in range(40)])
    message = str(NoValidHost(many))
    assert len(message) <= 255 and message.startswith("No valid host was found. 40 hosts; Filter0 removed 5")
    assert Verdicts().explain() == "There are no compute hosts."


def test_choose_filters_weighs_and_picks_among_the_best():
    cfg = SchedulerConfig(host_subset_size=2, filters=["ComputeFilter", "RamFilter"], weighers=["RAMWeigher"])
    scheduler = Scheduler(None, cfg)  # type: ignore[arg-type]
    hosts = [host("full", memory_mb=256), host("off", disabled=True), host("a", memory_mb=8192),
             host("b", memory_mb=4096), host("c", memory_mb=2048)]
    passed, ranked, verdicts = scheduler.choose(hosts, spec())
    assert [h.host for h in ranked] == ["a", "b", "c"]
    assert verdicts.num_passed == 3
    assert [(h, flt) for h, flt, _ in verdicts.rejected] == [("off", "ComputeFilter"), ("full", "RamFilter")]
    assert [row["host"] for row in verdicts.table() if row["result"] == "passed"] == ["a", "b", "c"]


def test_a_loads_columns_follow_its_hosts_and_decide_as_the_hosts_alone_do():
    """load_host_states keeps the hosts' free resources in arrays too (HostColumns): what the
    filters and weighers read there is what each host says, after every consume, and every
    decision (verdicts, weights to the last bit, ranking) is the one on hosts without them."""
    import random

    rnd = random.Random(7)

    def hosts() -> list[HostState]:
        rnd.seed(7)
        return [host(f"h{i:03d}", vcpus=rnd.choice([4, 16]), memory_mb=rnd.choice([2048, 16384]),
                     memory_mb_used=512 * rnd.randint(0, 8), vcpus_used=rnd.randint(0, 6),
                     disk_gb_used=rnd.randint(0, 90), disabled=rnd.random() < 0.1, up=rnd.random() > 0.1,
                     failed_builds=rnd.choice([0, 0, 0, 2])) for i in range(200)]

    loaded, alone = hosts(), hosts()
    with_columns = HostList(loaded, HostColumns(loaded))  # as load_host_states returns them
    cfg = SchedulerConfig(host_subset_size=1)
    scheduler = Scheduler(None, cfg)  # type: ignore[arg-type]
    for round_ in range(60):
        s = spec(vcpus=rnd.choice([1, 2]), ram=rnd.choice([512, 1024, 4096]), root=rnd.choice([1, 20]))
        if round_ % 4 == 0:  # a soft group: a weigher whose raw weights are read per host
            s["group"] = {"uuid": "g", "policy": "soft-anti-affinity", "rules": {}, "hosts": {"h001": 2, "h007": 1}}
        results = [scheduler.choose(hs, s) for hs in (with_columns, alone)]
        (_, ranked_a, verdicts_a), (_, ranked_b, verdicts_b) = results
        assert verdicts_a.to_dict() == verdicts_b.to_dict()
        assert [(h, t.hex()) for h, t, _ in verdicts_a.weights] == [(h, t.hex()) for h, t, _ in verdicts_b.weights]
        assert [h.host for h in ranked_a] == [h.host for h in ranked_b]
        if not ranked_a:
            continue
        flavor = s["flavor"]
        for chosen in (ranked_a[0], ranked_b[0]):
            chosen.consume(flavor["vcpus"], flavor["memory_mb"], flavor["root_gb"], f"u{round_}")
        for name in ("free_ram_mb", "free_vcpus", "free_disk_gb"):
            assert column(with_columns, name).tolist() == [getattr(h, name) for h in with_columns]
    assert any(r[1] == "RamFilter" for r in verdicts_a.rejected)  # the hosts filled up on the way
