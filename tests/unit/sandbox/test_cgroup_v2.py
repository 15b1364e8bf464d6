"""cgroup v2 support, pure logic on a fake cgroupfs: which hierarchy a host has, the delegated
subtree's set-up (service leaf, controllers enabled), and the values written per run.

Not a real cgroup v2 node: this repo's machine runs cgroup v1 (docs/sandbox.md says what was
never verified)."""

from pathlib import Path

import pytest

from agentrl.sandbox.cgroup_v2 import (
    SERVICE_LEAF,
    CgroupV2,
    CgroupV2Parent,
    cgroup_version,
    cpu_max,
    own_path_v2,
)

POD = "kubepods/burstable/pod1/c1"


def v2_root(tmp_path: Path, controllers: str = "cpuset cpu io memory hugetlb pids") -> Path:
    own = tmp_path / POD
    own.mkdir(parents=True)
    (tmp_path / "cgroup.controllers").write_text(controllers)
    (own / "cgroup.controllers").write_text(controllers)
    (own / "cgroup.procs").write_text("11\n12\n")
    (own / "cgroup.subtree_control").write_text("")
    return own


def test_which_hierarchy(tmp_path):
    assert cgroup_version(tmp_path) == "none"
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("")
    assert cgroup_version(tmp_path) == "none"  # a hybrid host's empty unified mount
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "cgroup.procs").write_text("")
    assert cgroup_version(tmp_path) == "v1"
    (tmp_path / "cgroup.controllers").write_text("memory pids")
    assert cgroup_version(tmp_path) == "v2"


def test_own_path_and_cpu_max():
    assert own_path_v2("12:pids:/x\n0::/kubepods/pod1/c1\n") == "/kubepods/pod1/c1"
    with pytest.raises(ValueError):
        own_path_v2("4:memory:/x\n")
    assert cpu_max(1.0) == "100000 100000"
    assert cpu_max(2.5) == "250000 100000"
    assert cpu_max(0.001) == "1000 100000"  # the kernel's minimum quota is 1 ms


def test_delegated_subtree_is_set_up(tmp_path):
    own = v2_root(tmp_path)
    parent, note = CgroupV2Parent.detect(
        "agentrl-sandbox-1-ab", tmp_path, proc_cgroup=f"0::/{POD}\n"
    )
    assert parent is not None and parent.path == own / "agentrl-sandbox-1-ab", note
    assert (own / SERVICE_LEAF / "cgroup.procs").exists()  # the service's processes moved
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (parent.path / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    parent.weigh_as(8)
    assert (parent.path / "cpu.weight").read_text() == "800"
    parent.weigh_as(1000)
    assert (parent.path / "cpu.weight").read_text() == "10000"
    assert parent.child("slot-0").path == parent.path / "slot-0"


def test_missing_controllers_are_named(tmp_path):
    v2_root(tmp_path, controllers="cpu memory")
    parent, note = CgroupV2Parent.detect("agentrl-sandbox-1-ab", tmp_path, f"0::/{POD}\n")
    assert parent is None and "pids" in note


def test_a_v1_host_is_not_v2(tmp_path):
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "cgroup.procs").write_text("")
    parent, note = CgroupV2Parent.detect("agentrl-sandbox-1-ab", tmp_path, "0::/\n")
    assert parent is None and "no cgroup v2" in note


def test_limits_and_usage_files(tmp_path):
    group = CgroupV2(tmp_path)
    (tmp_path / "memory.swap.max").write_text("max")
    group.set_limits(512, 64, 1.5)
    assert (tmp_path / "memory.max").read_text() == str(512 << 20)
    assert (tmp_path / "memory.swap.max").read_text() == "0"
    assert (tmp_path / "pids.max").read_text() == "64"
    assert (tmp_path / "cpu.max").read_text() == "150000 100000"
    (tmp_path / "memory.max").unlink()
    group.set_limits(512, 64, 1.5)  # unchanged limits: nothing rewritten
    assert not (tmp_path / "memory.max").exists()
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\n")
    (tmp_path / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    (tmp_path / "memory.peak").write_text(str(300 << 20))
    assert (group.oom_kills(), group.memory_failures()) == (2, 7)
    assert group.cpu_time_s() == 2.5
    assert group.peak_memory_bytes() == 300 << 20
    assert group.join_script() == f"echo $$ > {tmp_path / 'cgroup.procs'}; "
