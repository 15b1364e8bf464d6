"""A session's call leaves no process running once it returns, against the real bwrap backend:
with the session's cgroup (root with cgroups, the default here) and without one (found through
/proc, as on a host without cgroups). Variables and files stay; processes do not."""

import subprocess
import uuid

import pytest

from agentrl.common.config import SandboxConfig
from agentrl.sandbox import bwrap
from agentrl.sandbox.executor import Sandbox
from agentrl.sandbox.interface import ExecutionRequest, Status

# bubblewrap is installed by scripts/setup.sh: a missing one must fail the suite, not skip it.

# A sleep length no other process on the host uses, so `ps` finds exactly the test's.
MARKER = "4242.47"

LEFTOVERS = {
    "shell background job": f"import os\nos.system('sleep {MARKER} &')",
    "kept subprocess": f"import subprocess\nchild = subprocess.Popen(['sleep', '{MARKER}'])",
    "double-forked daemon": (
        "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        os.execvp('sleep', ['sleep', '{MARKER}'])\n    os._exit(0)\nos.wait()"
    ),
    "busy process": (
        "import subprocess, sys\nbusy = subprocess.Popen([sys.executable, '-c', "
        f"'while True: pass', '{MARKER}'])"
    ),
    "process that keeps forking": (
        "import subprocess\nforker = subprocess.Popen(['sh', '-c', "
        f"'while true; do sleep {MARKER} & sleep 0.01; done'])\nimport time; time.sleep(0.2)"
    ),
}


@pytest.fixture(scope="module", params=["cgroup", "no cgroup"])
def sandbox(request):
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "no cgroup":
            patch.setattr(bwrap, "detect_cgroups", lambda name, is_root: (None, "the test"))
        sandbox = Sandbox(SandboxConfig(max_concurrency=2, queue_size=50))
    assert (sandbox.backend.cgroups is None) == (request.param == "no cgroup")
    yield sandbox
    sandbox.close()


def running(marker: str = MARKER) -> list[str]:
    """Live host processes whose command line carries `marker` (zombies are dead)."""
    out = subprocess.run(
        ["ps", "-eo", "stat=,args="], capture_output=True, text=True, check=True
    ).stdout
    return [
        line
        for line in out.splitlines()
        if marker in line and not line.startswith("Z") and "ps -eo" not in line
    ]


@pytest.mark.parametrize("kind", list(LEFTOVERS))
def test_what_a_call_leaves_running_is_ended_when_it_returns(sandbox, kind):
    session_id = uuid.uuid4().hex
    result = sandbox.execute(
        ExecutionRequest(
            code=f"state = 'kept'\n{LEFTOVERS[kind]}\nprint('started')", session_id=session_id
        )
    )
    assert (result.status, result.stdout) == (Status.OK, "started\n"), result.stderr
    assert running() == []  # checked at once: the answer comes after the kill
    assert "background process(es) the call left running" in result.message
    after = sandbox.execute(ExecutionRequest(code="print(state)", session_id=session_id))
    assert (after.status, after.stdout, after.message) == (Status.OK, "kept\n", "")
    assert sandbox.close_session(session_id)


def test_a_call_that_leaves_nothing_says_nothing(sandbox):
    session_id = uuid.uuid4().hex
    code = "import subprocess\nprint(subprocess.run(['echo', 'hi'], capture_output=True).stdout)"
    for _ in range(2):
        result = sandbox.execute(ExecutionRequest(code=code, session_id=session_id))
        assert (result.status, result.stdout, result.message) == (Status.OK, "b'hi\\n'\n", "")
    assert sandbox.close_session(session_id)
