"""The argv of one sandbox: the launcher's flags and the shell prologue it replaces carry the
same cgroup joins, rlimits (in each tool's unit), seccomp fd and uid, in every mode."""

import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest

from agentrl.common.config import SandboxConfig
from agentrl.sandbox.bwrap_argv import Tools, sandbox_argv
from agentrl.sandbox.cgroups import Cgroup

CONFIG = SandboxConfig(disk_mb=16, cpu_cores=1.5, max_processes=32)
SLOT_DIR = SimpleNamespace(private=False, work=Path("/slots/a/work"), tmp=Path("/slots/a/tmp"))
# sh's ulimit flags and the factor from their unit to the kernel's (-f: 512-byte blocks,
# -v: KiB).
ULIMITS = {"-c": ("core", 1), "-f": ("fsize", 512), "-n": ("nofile", 1), "-t": ("cpu", 1)}
ULIMITS["-v"] = ("as", 1024)


def tools(launcher, run_as=65534):
    return Tools(
        bwrap="/usr/bin/bwrap",
        setpriv="/usr/bin/setpriv",
        run_as=run_as,
        seccomp_filter="/i/seccomp.bpf",
        sized_tmpfs=True,
        launcher=launcher,
    )


def from_launcher(argv):
    """(joined files, rlimits, opened fds, uid/gid, the rest) of a launcher argv."""
    end = argv.index("--")
    flags = list(zip(argv[1:end:2], argv[2:end:2], strict=True))
    rlimits = dict(value.split("=") for flag, value in flags if flag == "-r")
    return (
        [value for flag, value in flags if flag == "-j"],
        {name: int(value) for name, value in rlimits.items()},
        [value for flag, value in flags if flag == "-f"],
        [value for flag, value in flags if flag in ("-u", "-g")],
        argv[end + 1 :],
    )


def from_shell(argv):
    """The same, read from a `sh -c PROLOGUE sh setpriv ...` argv."""
    words = shlex.split(argv[2].replace(";", " ; "))
    joined = [words[i + 3] for i, word in enumerate(words) if word == "echo"]  # echo $$ > F
    rlimits = {}
    for i, word in enumerate(words):
        if word == "ulimit":
            name, factor = ULIMITS[words[i + 1]]
            rlimits[name] = int(words[i + 2]) * factor
    redirect = words[words.index("exec") + 2]  # exec "$@" N<path
    fd, path = redirect.split("<")
    rest = argv[4:]
    ids = []
    if rest[0].endswith("setpriv"):
        end = rest.index("--")
        ids = [flag.split("=")[1] for flag in rest[1:end] if flag.startswith("--re")]
        rest = rest[end + 1 :]
    return joined, rlimits, [f"{fd}={path}"], ids, rest


@pytest.mark.parametrize("with_cgroup", [True, False], ids=["cgroup", "no cgroup"])
@pytest.mark.parametrize("run_as", [65534, None], ids=["root", "not root"])
def test_the_launcher_and_the_shell_carry_the_same_steps(with_cgroup, run_as):
    cgroup = Cgroup({c: Path(f"/cg/{c}/slot") for c in ("memory", "pids")}) if with_cgroup else None
    program = ["/usr/bin/python3", "-c", "pass"]
    launched = from_launcher(
        sandbox_argv(CONFIG, tools("/i/launch", run_as), SLOT_DIR, cgroup, 10, 256, program, (3,))
    )
    shell = from_shell(
        sandbox_argv(CONFIG, tools(None, run_as), SLOT_DIR, cgroup, 10, 256, program, (3,))
    )
    assert launched == shell
    joined, rlimits, opened, ids, rest = launched
    assert joined == ([str(p) for p in cgroup.procs_files()] if cgroup else [])
    expected = {"core": 0, "fsize": 16 << 20, "nofile": 1024, "cpu": 16}  # 10 s x 1.5 cores + 1
    if cgroup is None:  # no memory cgroup: address space, with the slack on top
        expected["as"] = (256 + 256) << 20
    assert rlimits == expected
    assert opened == ["4=/i/seccomp.bpf"]  # fd 3 is the caller's
    assert ids == ([] if run_as is None else ["65534", "65534"])
    assert rest[0] == "/usr/bin/bwrap" and rest[-3:] == program
    assert rest[rest.index("--seccomp") + 1] == "4"
