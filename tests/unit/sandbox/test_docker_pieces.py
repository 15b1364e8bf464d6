"""Pieces the docker backend builds on, without an engine: finding another process's cgroups,
filtering a group's processes by uid, and emptying work dirs in place (a container
bind-mounts them once, for its whole life)."""

import os
import stat
from pathlib import Path

from agentrl.sandbox.cgroups import CONTROLLERS, Cgroup
from agentrl.sandbox.docker_pool import runs_before_recycle
from agentrl.sandbox.workdir import SlotDir


def test_cgroup_of_process_finds_its_v1_groups(tmp_path):
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(","):
            own[name] = path
    mounts = {"memory": ("memory",), "pids": ("pids",), "cpu,cpuacct": ("cpu", "cpuacct")}
    for mount, controllers in mounts.items():
        (tmp_path / mount).mkdir()
        (tmp_path / mount / "cgroup.procs").write_text("")
        group_dir = tmp_path / mount / own.get(controllers[0], "/").lstrip("/")
        group_dir.mkdir(parents=True, exist_ok=True)
        (group_dir / "cgroup.procs").write_text(f"{os.getpid()}\n")
    group = Cgroup.of_process(os.getpid(), root=tmp_path)
    assert group is not None and set(group.paths) == set(CONTROLLERS)
    assert group.paths["cpuacct"] == tmp_path / "cpu,cpuacct" / own.get("cpuacct", "/").lstrip("/")
    assert group.pids() == [os.getpid()]
    (tmp_path / "pids" / "cgroup.procs").unlink()
    assert Cgroup.of_process(os.getpid(), root=tmp_path) is None


def test_pids_filtered_by_real_uid(tmp_path):
    (tmp_path / "cgroup.procs").write_text(f"{os.getpid()}\n999999999\n")
    group = Cgroup({"pids": tmp_path})
    assert group.pids() == [os.getpid(), 999999999]
    assert group.pids(uid=os.getuid()) == [os.getpid()]
    assert group.pids(uid=os.getuid() + 12345) == []


def test_clear_empties_work_dirs_in_place(tmp_path):
    slot = SlotDir(tmp_path / "slot", 4, None)
    try:
        inode = slot.work.stat().st_ino
        (slot.work / "a" / "b").mkdir(parents=True)
        (slot.work / "f.txt").write_text("x")
        os.symlink(tmp_path, slot.work / "link")
        (slot.tmp / "planted").write_text("1")
        os.chmod(slot.work, 0o500)
        assert not slot.is_empty("tmp") and not slot.is_empty("work")
        slot.clear()
        assert slot.work.stat().st_ino == inode
        assert list(slot.work.iterdir()) == [] and slot.is_empty("tmp")
        assert stat.S_IMODE(slot.work.stat().st_mode) == 0o700
        assert tmp_path.is_dir()  # the link was removed, not followed
    finally:
        slot.close()


def test_first_round_of_containers_is_recycled_one_at_a_time():
    # Four containers started together with 50 runs each would all be recycled after ~200
    # runs at once; the first round's budgets are spread, later containers get the full 50.
    first_round = [runs_before_recycle(n, 4, 50) for n in range(1, 5)]
    assert first_round == [13, 25, 38, 50]
    assert len(set(first_round)) == 4
    assert runs_before_recycle(5, 4, 50) == runs_before_recycle(99, 4, 50) == 50
    assert runs_before_recycle(1, 1, 3) == 3  # one container: its budget as configured
    assert runs_before_recycle(1, 8, 2) == 1  # never below one run
