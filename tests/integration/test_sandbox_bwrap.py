"""Hostile programs against the real bwrap backend: each ends with the right status, the
sandbox stays usable and nothing survives on the host."""

import os
import socket
import subprocess
import time

import pytest

from agentrl.common.config import SandboxConfig
from agentrl.sandbox.executor import Sandbox
from agentrl.sandbox.interface import ExecutionRequest, Status

# bubblewrap is installed by scripts/setup.sh: a missing one must fail the suite, not skip it.


@pytest.fixture(scope="module")
def sandbox():
    config = SandboxConfig(
        max_concurrency=4, queue_size=400, disk_mb=16, max_processes=64, max_output_bytes=64 * 1024
    )
    sandbox = Sandbox(config)
    yield sandbox
    sandbox.close()


def run(sandbox, code, **fields):
    return sandbox.execute(ExecutionRequest(code=code, **fields))


def leftovers(sandbox, marker="sleep 4242.1", wait_s=2.0):
    """Live processes a finished run left behind: beyond the warm interpreter of each slot
    (one-shot sandboxes: bwrap, bwrap's init, python: 3 processes; in a slot sandbox, besides
    its own bwrap and executor: the run's init and python, 2), or any host process whose command line
    carries `marker`. Zombies are dead and not counted. A run is answered as soon as its
    program is done and its sandbox is killed in the background, so this waits up to
    `wait_s` for that teardown (test_next_run_never_meets_the_previous_one checks that it
    always happens before the slot is used again)."""
    deadline = time.monotonic() + wait_s
    while True:
        extra = [
            slot.name
            for slot in sandbox.backend._all
            if slot.cgroup is not None
            and len(slot.cgroup.pids(exclude=slot.own_pids)) > (2 if slot.sandbox else 3)
        ]
        out = subprocess.run(
            ["ps", "-eo", "stat=,args="], capture_output=True, text=True, check=True
        ).stdout
        stray = [
            line
            for line in out.splitlines()
            if marker in line and not line.startswith("Z") and "ps -eo" not in line
        ]
        if not extra + stray or time.monotonic() > deadline:
            return extra + stray
        time.sleep(0.05)


def assert_healthy(sandbox):
    result = run(sandbox, "print(6 * 7)")
    assert (result.status, result.stdout) == (Status.OK, "42\n")


def test_ok_error_stdin_files_and_limits_reported(sandbox):
    result = run(
        sandbox,
        "import sys\nprint(input()[::-1])\nopen('out/r.txt','w').write('x')",
        stdin=b"abc\n",
        files={"out/in.txt": b"1"},
        fetch_files=["out/r.txt", "nope"],
    )
    assert result.status == Status.OK and result.stdout == "cba\n" and result.exit_code == 0
    assert result.files == {"out/r.txt": b"x"}
    assert result.wall_time_s > 0 and result.peak_memory_mb > 1 and result.backend == "bwrap"
    failed = run(sandbox, "import sys; sys.exit(3)")
    assert (failed.status, failed.exit_code) == (Status.ERROR, 3)
    raised = run(sandbox, "1/0")
    assert raised.status == Status.ERROR and "ZeroDivisionError" in raised.stderr
    assert 'File "/work/main.py", line 1' in raised.stderr


def test_process_limit_holds_before_any_fork_bomb():
    config = SandboxConfig(max_concurrency=1, max_processes=8)
    small = Sandbox(config)
    try:
        result = run(
            small,
            "import subprocess\nps=[]\ntry:\n    for _ in range(20): "
            "ps.append(subprocess.Popen(['sleep','30']))\nexcept OSError:\n    pass\n"
            "print(len(ps))",
            timeout_s=10,
        )
        assert result.status == Status.OK and 0 < int(result.stdout) < 8
    finally:
        small.close()


@pytest.mark.slow
def test_fork_bomb_is_contained(sandbox):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = run(sandbox, code, timeout_s=2)
    assert result.status == Status.TIMEOUT
    assert leftovers(sandbox) == []
    assert_healthy(sandbox)


def test_memory_bomb_is_oom(sandbox):
    result = run(
        sandbox, "x = []\nwhile True: x.append(bytearray(10**7))", memory_mb=128, timeout_s=20
    )
    assert result.status == Status.OOM and "128 MB" in result.message
    assert result.peak_memory_mb <= 130


def test_infinite_loop_times_out_at_the_limit(sandbox):
    result = run(sandbox, "while True: pass", timeout_s=1)
    assert result.status == Status.TIMEOUT and 1.0 <= result.wall_time_s < 2.0


def test_setsid_child_dies_with_the_program(sandbox):
    code = (
        "import subprocess\nsubprocess.Popen(['sleep', '4242.17'], start_new_session=True)\n"
        "print('spawned')"
    )
    result = run(sandbox, code)
    assert result.status == Status.OK and result.stdout == "spawned\n"
    assert leftovers(sandbox) == []


def test_next_run_never_meets_the_previous_one():
    """One slot: a run leaves a setsid child and a file; the next run in that slot starts
    only once the child is dead and the file gone, even though the first was answered early."""
    from agentrl.sandbox.bwrap import BwrapBackend

    config = SandboxConfig(max_concurrency=1)
    backend = BwrapBackend(config, num_slots=1)
    single = Sandbox(config, backend=backend)
    seen = []
    run_in_slot = backend.run_in_slot

    def checked(slot, request):
        out = subprocess.run(
            ["ps", "-eo", "stat=,args="], capture_output=True, text=True, check=True
        ).stdout
        seen.append(
            (
                [
                    line
                    for line in out.splitlines()
                    if "sleep 4242.19" in line and not line.startswith("Z") and "ps -eo" not in line
                ],
                len(slot.cgroup.pids(exclude=slot.own_pids)) if slot.cgroup else 0,
                3 if slot.sandbox is None else 2,  # the warm sandbox's (as in leftovers)
            )
        )
        return run_in_slot(slot, request)

    backend.run_in_slot = checked
    try:
        code = (
            "import subprocess\nopen('left.txt', 'w').write('x')\n"
            "subprocess.Popen(['sleep', '4242.19'], start_new_session=True)\nprint('a')"
        )
        for _ in range(3):
            first = run(single, code)
            second = run(single, "import os\nprint(sorted(os.listdir('.')))")
            assert (first.status, first.stdout) == (Status.OK, "a\n")
            assert (second.status, second.stdout) == (Status.OK, "['main.py']\n")
        assert all(stray == [] and procs <= warm for stray, procs, warm in seen), seen
        assert leftovers(single, marker="sleep 4242.19") == []
    finally:
        single.close()


def test_setsid_child_dies_on_timeout(sandbox):
    code = (
        "import subprocess, time\nsubprocess.Popen(['sleep', '4242.18'], start_new_session=True)"
        "\ntime.sleep(100)"
    )
    assert run(sandbox, code, timeout_s=1).status == Status.TIMEOUT
    assert leftovers(sandbox) == []


def test_100_mb_of_output_is_capped_and_flagged(sandbox):
    result = run(
        sandbox,
        "import sys\nsys.stdout.write('x' * (100 * 1024 * 1024))",
        timeout_s=20,
        memory_mb=512,
    )
    assert result.status == Status.OUTPUT_LIMIT and result.stdout_truncated
    assert result.stdout == "x" * (64 * 1024)
    assert result.wall_time_s < 10


def test_output_below_the_cap_comes_back_whole(sandbox):
    result = run(sandbox, "print('y' * 60000, end='')")
    assert result.status == Status.OK and len(result.stdout) == 60000
    assert not result.stdout_truncated


def test_no_network_to_loopback_or_outside(sandbox):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        local = run(sandbox, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 1)")
        assert local.status == Status.ERROR and "ConnectionRefusedError" in local.stderr
        outside = run(sandbox, "import socket\nsocket.create_connection(('1.1.1.1', 80), 1)")
        assert outside.status == Status.ERROR and "unreachable" in outside.stderr
    finally:
        listener.close()


def test_writes_outside_the_work_dir_fail(sandbox):
    for path in ("/usr/evil", "/etc/evil", "/evil", "/proc/sys/kernel/hostname"):
        result = run(sandbox, f"open({path!r}, 'w').write('x')")
        assert result.status == Status.ERROR, path
    assert not os.path.exists("/usr/evil") and not os.path.exists("/evil")


def test_service_environment_is_invisible(sandbox, monkeypatch):
    monkeypatch.setenv("AGENTRL_SECRET_FOR_TEST", "hunter2")
    # pid 1 is bwrap's init, or in a slot sandbox the run's init, whose /proc entries are
    # closed to the program (not dumpable: it held the executor's capabilities).
    code = (
        "import os\nprint(sorted(os.environ))\ntry:\n"
        "    print(open('/proc/1/environ','rb').read())\nexcept PermissionError:\n"
        "    print('closed')\nprint(os.listdir('/proc'))"
    )
    result = run(sandbox, code)
    assert result.status == Status.OK and "hunter2" not in result.stdout
    assert "AGENTRL" not in result.stdout
    assert str(os.getpid()) not in result.stdout.splitlines()[-1].split(", ")


def test_filling_the_disk_hits_the_slot_limit(sandbox):
    code = "i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20)); i += 1"
    result = run(sandbox, code, timeout_s=10)
    assert result.status == Status.ERROR and "No space left" in result.stderr
    assert run(sandbox, "import os; print(os.listdir('.'))").stdout == "['main.py']\n"


def test_killing_its_parent_changes_nothing(sandbox):
    code = (
        "import os, signal\nfor pid in (os.getppid(), 1, -1):\n    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\nprint('alive')"
    )
    parent = os.getppid()  # the test runner's parent (init itself when started detached)
    result = run(sandbox, code)
    assert result.status in (Status.OK, Status.ERROR)
    assert os.getppid() == parent  # a killed parent would leave this process to init
    assert_healthy(sandbox)


def test_fetch_files_never_follow_symlinks(sandbox):
    code = "import os\nos.symlink('/etc/hostname', 'link')\nos.mkfifo('fifo')"
    result = run(sandbox, code, fetch_files=["link", "fifo"])
    assert result.status == Status.OK and result.files == {}


def test_untraversable_work_root_is_a_clear_error(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("only root runs the sandbox as another uid")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(ValueError, match="traversable"):
        Sandbox(SandboxConfig(max_concurrency=1, work_root=private / "w"))


def test_unknown_language_and_huge_request_are_rejected(sandbox):
    assert run(sandbox, "x", language="cobol").status == Status.REJECTED
    huge = run(sandbox, "x", stdin=b"x" * (sandbox.config.max_request_bytes + 1))
    assert huge.status == Status.REJECTED and "max_request_bytes" in huge.message


def test_non_utf8_output_is_replaced_not_fatal(sandbox):
    result = run(sandbox, "import sys\nsys.stdout.buffer.write(b'\\xff\\xfeok')")
    assert result.status == Status.OK and result.stdout.endswith("ok")


def test_bash_runs_cold(sandbox):
    result = run(sandbox, "echo $((6*7)); exit 4", language="bash")
    assert (result.status, result.stdout, result.exit_code) == (Status.ERROR, "42\n", 4)


@pytest.mark.slow
def test_200_concurrent_executions_none_lost(sandbox):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(64) as pool:
        results = list(
            pool.map(lambda i: run(sandbox, f"print({i})", request_id=str(i)), range(200))
        )
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(200)]
    assert all(r.status == Status.OK for r in results)
    assert leftovers(sandbox) == []
    time.sleep(0.1)


def test_startup_sweeps_what_a_crashed_service_left():
    if os.geteuid() != 0 or not os.path.isdir("/sys/fs/cgroup/pids"):
        pytest.skip("needs root and cgroup v1")
    from agentrl.sandbox.cgroups import _own_path

    stale = os.path.join(
        "/sys/fs/cgroup/pids", _own_path("pids").lstrip("/"), "agentrl-sandbox-999999999-dead00"
    )
    os.makedirs(os.path.join(stale, "slot-0"), exist_ok=True)
    fresh = Sandbox(SandboxConfig(max_concurrency=1))
    try:
        assert not os.path.exists(stale)
    finally:
        fresh.close()


def test_runs_of_a_slot_sandbox_share_nothing_but_the_sandbox():
    """With cgroups, one bwrap sandbox serves every run of a slot (agentrl.sandbox.slot_executor),
    each run in fresh pid, IPC and mount namespaces: what a run leaves in /dev/shm, in SysV
    IPC, in its work dir or as a background process is gone for the next one, which sees only
    its own pid namespace (its init is pid 1; the executor and the slot's other processes are
    outside it); a run that kills everything it can leaves the sandbox serving."""
    from agentrl.sandbox.bwrap import BwrapBackend

    config = SandboxConfig(max_concurrency=1)
    backend = BwrapBackend(config, num_slots=1)
    single = Sandbox(config, backend=backend)
    slot = backend._all[0]
    try:
        if backend.cgroups is None:
            assert slot.sandbox is None  # no cgroup: a bwrap sandbox per run, as before
            return
        first = slot.sandbox.proc.pid
        leave = (
            "import os, subprocess\nsubprocess.run(['ipcmk', '-M', '4096'], check=True)\n"
            "open('/dev/shm/left', 'w').write('x')\nopen('left.txt', 'w').write('x')\n"
            "subprocess.Popen(['sleep', '4242.3'], start_new_session=True)\n"
            "for pid in (1, -1):\n    try:\n        os.kill(pid, 9)\n    except OSError:\n"
            "        pass\nprint('left')"
        )
        look = (
            "import os, subprocess\nprint(os.listdir('/dev/shm'), os.listdir('.'))\n"
            "print(subprocess.run(['ipcs', '-m'], capture_output=True, text=True).stdout.count('0x'))\n"
            "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
            "lines = [open(f'/proc/{p}/cmdline', 'rb').read() for p in pids]\n"
            "print(sum(b'4242.3' in line for line in lines), max(map(int, pids)) < 20)"
        )
        for _ in range(3):
            left = run(single, leave)
            assert left.status in (Status.OK, Status.ERROR), left
            seen = run(single, look)
            assert (seen.status, seen.stdout) == (Status.OK, "[] ['main.py']\n0\n0 True\n"), seen
        assert slot.sandbox is not None and slot.sandbox.proc.pid == first
    finally:
        backend.close()


def test_each_run_gets_its_rlimits(sandbox):
    """The rlimits are set per run (by the launcher, or in a slot sandbox by its executor for
    each program): CPU seconds from the request's timeout, file size, open files, no core."""
    result = run(sandbox, "ulimit -t -f -n -c", language="bash", timeout_s=5)
    values = [line.split()[-1] for line in result.stdout.splitlines()]
    disk_blocks = str((sandbox.config.disk_mb << 20) // 1024)  # bash's -f counts 1024 bytes
    assert values == ["6", disk_blocks, "1024", "0"], result


def test_a_slot_sandbox_whose_executor_dies_is_a_sandbox_error_then_starts_again():
    """The executor killed mid-run (the OOM killer may pick it): that run is `sandbox_error`,
    not a program error, and the slot's next run gets a new sandbox."""
    import signal
    import threading
    from pathlib import Path

    from agentrl.sandbox.bwrap import BwrapBackend

    backend = BwrapBackend(SandboxConfig(max_concurrency=1), num_slots=1)
    slot = backend._all[0]
    try:
        if backend.cgroups is None:
            assert slot.sandbox is None
            return
        first = slot.sandbox.proc.pid
        (executor,) = [
            pid
            for pid in slot.sandbox.own_pids
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"/.agentrl-executor")
        ]
        killer = threading.Timer(0.5, os.kill, (executor, signal.SIGKILL))
        killer.start()
        request = ExecutionRequest(
            code="sleep 3; echo done", language="bash", timeout_s=10, memory_mb=256
        )
        result = backend.execute(request)
        killer.join()
        assert (result.status, result.stdout) == (Status.SANDBOX_ERROR, ""), result
        again = backend.execute(ExecutionRequest(code="print(1)", timeout_s=10, memory_mb=256))
        assert (again.status, again.stdout) == (Status.OK, "1\n"), again
        assert slot.sandbox is not None and slot.sandbox.proc.pid != first
    finally:
        backend.close()
