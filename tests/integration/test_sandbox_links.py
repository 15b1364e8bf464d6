"""Session link planting against the real service (bwrap, as root when the suite runs as root):
a session's code plants a link in its work dir, the next call's `files` must not touch the
host. The 'host' is a temporary directory; a link's target is a host path because the
service, not the sandbox, resolves it when it writes."""

import os
import stat
import uuid
from pathlib import Path

import pytest

from agentrl.common.config import SandboxConfig
from agentrl.sandbox.executor import Sandbox
from agentrl.sandbox.interface import ExecutionRequest, Status

# bubblewrap is installed by scripts/setup.sh: a missing one must fail the suite, not skip it.


@pytest.fixture(scope="module")
def sandbox():
    sandbox = Sandbox(SandboxConfig(max_concurrency=2, queue_size=50, disk_mb=16))
    yield sandbox
    sandbox.close()


@pytest.fixture
def host(tmp_path):
    """A host directory holding one file that root owns with mode 0600."""
    (tmp_path / "secret.txt").write_bytes(b"host content")
    os.chmod(tmp_path / "secret.txt", 0o600)
    return tmp_path


def fingerprint(host: Path) -> dict:
    """Every entry under `host`: content, mode, owner, mtime."""
    found = {}
    for path in sorted(host.rglob("*")):
        info = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        found[str(path)] = (content, info.st_mode, info.st_uid, info.st_gid, info.st_mtime_ns)
    return found


def call(sandbox, session_id, code, **fields):
    return sandbox.execute(ExecutionRequest(code=code, session_id=session_id, **fields))


def plant(sandbox, session_id, code):
    result = call(sandbox, session_id, "import os\n" + code)
    assert result.status == Status.OK, result.stderr


@pytest.mark.parametrize(
    "link,files",
    [
        # to a host file: the next call's file would overwrite and chown it
        ("os.symlink({host!r} + '/secret.txt', 'input.txt')", {"input.txt": b"pwned"}),
        # to a host directory: a new host file would appear in it
        ("os.symlink({host!r}, 'data')", {"data/new.txt": b"pwned"}),
        # dangling, at a host path that does not exist yet
        ("os.symlink({host!r} + '/created.txt', 'out.txt')", {"out.txt": b"pwned"}),
        # dangling, as a directory that does not exist yet
        ("os.symlink({host!r} + '/newdir', 'deep')", {"deep/a/b.txt": b"pwned"}),
        # in a parent component below a real directory
        ("os.makedirs('a/b')\nos.symlink({host!r}, 'a/b/c')", {"a/b/c/d/e.txt": b"pwned"}),
    ],
    ids=["host-file", "host-dir", "dangling-file", "dangling-dir", "parent-component"],
)
def test_planted_link_is_refused_and_the_host_untouched(sandbox, host, link, files):
    session_id = uuid.uuid4().hex
    before = fingerprint(host)
    plant(sandbox, session_id, link.format(host=str(host)))
    result = call(sandbox, session_id, "print('ran')", files=files)
    assert fingerprint(host) == before
    assert result.status == Status.REJECTED and result.stdout == ""
    assert "is a symbolic link" in result.message and "Traceback" not in result.message
    # the session is still there, and the call that was refused did not run
    after = call(sandbox, session_id, "print(sorted(os.listdir('.')))")
    assert after.status == Status.OK and "ran" not in after.stdout


def test_link_swapped_in_between_two_calls(sandbox, host):
    session_id = uuid.uuid4().hex
    before = fingerprint(host)
    first = call(
        sandbox, session_id, "print(open('input.txt').read())", files={"input.txt": b"one"}
    )
    assert (first.status, first.stdout) == (Status.OK, "one\n")
    plant(
        sandbox,
        session_id,
        f"os.remove('input.txt')\nos.symlink({str(host)!r} + '/secret.txt', 'input.txt')",
    )
    second = call(sandbox, session_id, "print('ran')", files={"input.txt": b"two"})
    assert fingerprint(host) == before
    assert second.status == Status.REJECTED and "symbolic link" in second.message
    fetched = call(sandbox, session_id, "pass", fetch_files=["input.txt"])
    assert fetched.status == Status.OK and fetched.files == {}  # reads do not follow either
    assert fingerprint(host) == before


def test_link_swapped_while_the_service_writes(sandbox, host):
    """A thread the session leaves running swaps `d` between a directory and a link to the
    host while calls keep writing `d/x.txt`: each call is written or refused, never leaked."""
    session_id = uuid.uuid4().hex
    before = fingerprint(host)
    plant(
        sandbox,
        session_id,
        f"""
import shutil, threading
def swap():
    while True:
        for make in (lambda: os.symlink({str(host)!r}, 'd'), lambda: os.mkdir('d')):
            try:
                make()
            except OSError:
                pass
            try:
                os.unlink('d') if os.path.islink('d') else shutil.rmtree('d')
            except OSError:
                pass
threading.Thread(target=swap, daemon=True).start()
""",
    )
    statuses = [
        call(sandbox, session_id, "pass", files={"d/x.txt": b"x"}).status for _ in range(40)
    ]
    assert set(statuses) <= {Status.OK, Status.REJECTED}
    assert fingerprint(host) == before


def test_normal_files_keep_their_owner_and_mode(sandbox):
    session_id = uuid.uuid4().hex
    code = (
        "import os\nfor p in ('a', 'a/b.txt'):\n"
        "    s = os.stat(p)\n    print(p, s.st_uid, oct(s.st_mode & 0o777))\n"
        "print(open('a/b.txt').read())"
    )
    first = call(sandbox, session_id, code, files={"a/b.txt": b"one"})
    second = call(sandbox, session_id, code, files={"a/b.txt": b"two"})
    uid = 65534 if os.geteuid() == 0 else os.getuid()
    umask = os.umask(0)
    os.umask(umask)
    dir_mode, file_mode = oct(0o777 & ~umask), oct(0o666 & ~umask)
    for result, content in ((first, "one"), (second, "two")):
        assert result.status == Status.OK, result.stderr
        assert result.stdout == f"a {uid} {dir_mode}\na/b.txt {uid} {file_mode}\n{content}\n"
