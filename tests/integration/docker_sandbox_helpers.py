"""What a docker sandbox container holds after a run: shared by the docker tests and the
hostile battery."""

from __future__ import annotations

from pathlib import Path

from agentrl.sandbox.cgroups import Cgroup
from agentrl.sandbox.docker_pool import EXECUTOR_SOURCE, WARM_SOURCE

SANDBOX_UID = 65534  # SandboxConfig.sandbox_uid: the uid of every program in a docker container


def left_in_container(cgroup: Cgroup) -> list[str]:
    """Command lines of the live processes of the sandbox uid in a container's cgroup, other
    than those the pool keeps or is starting: warm interpreters, the executor's children
    between setresuid and execve (they run the executor's own code; a run's processes never do,
    its program was exec'd) and `runc init`. Zombies, and processes whose memory is already
    gone (their cmdline reads empty), are exiting, not left over. OSError: the container is
    being removed."""
    stray = []
    for pid in cgroup.pids(uid=SANDBOX_UID):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            # The state follows the parenthesised command name: Z (zombie) and X (dead).
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state in ("Z", "X") or not cmdline or cmdline.startswith(b"runc"):
            continue
        if not any(source.encode()[:40] in cmdline for source in (WARM_SOURCE, EXECUTOR_SOURCE)):
            stray.append(cmdline.decode(errors="replace"))
    return stray
