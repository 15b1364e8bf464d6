"""The work-dir file helpers never write through a link the program planted: each kind of
link is planted here by the test, in a temporary directory that stands for the host."""

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentrl.sandbox.no_follow import UnsafePath, read_file, write_file
from agentrl.sandbox.workdir import SlotDir

# A uid the files are given to when the test runs as root (the sandbox's default uid).
SANDBOX_UID = 65534


@pytest.fixture
def tree(tmp_path):
    """A work dir and, beside it, a 'host' directory holding a file the links point at."""
    work, host = tmp_path / "work", tmp_path / "host"
    work.mkdir()
    host.mkdir()
    secret = host / "secret.txt"
    secret.write_bytes(b"host content")
    os.chmod(secret, 0o640)
    return work, host, secret


def fingerprint(host: Path) -> dict:
    """Every entry under `host` with its content, mode and owner."""
    found = {}
    for path in sorted(host.rglob("*")):
        info = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        found[str(path)] = (content, info.st_mode, info.st_uid, info.st_gid)
    return found


def test_a_normal_write_makes_parents_and_matches_the_old_modes(tree):
    work, _, _ = tree
    write_file(work, "a/b/c.txt", b"data", uid=None)
    reference = work.parent / "reference.txt"
    reference.write_bytes(b"")  # what Path.write_bytes (the previous writer) gives
    reference_dir = work.parent / "reference_dir"
    reference_dir.mkdir()
    assert (work / "a/b/c.txt").read_bytes() == b"data"
    assert (work / "a/b/c.txt").stat().st_mode == reference.stat().st_mode
    assert (work / "a").stat().st_mode == reference_dir.stat().st_mode
    assert read_file(work, "a/b/c.txt", 100) == b"data"
    assert read_file(work, "a/b/c.txt", 3) is None  # larger than allowed


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files away needs root")
def test_files_and_made_directories_belong_to_the_given_uid(tree):
    work, _, _ = tree
    (work / "kept").mkdir()
    write_file(work, "kept/made/f.txt", b"x", uid=SANDBOX_UID)
    assert (work / "kept/made/f.txt").stat().st_uid == SANDBOX_UID
    assert (work / "kept/made").stat().st_uid == SANDBOX_UID
    assert (work / "kept").stat().st_uid == 0  # existing directories are left as they are


def test_overwriting_a_regular_file_keeps_its_inode_and_mode(tree):
    work, _, _ = tree
    script = work / "run.sh"
    script.write_bytes(b"old content, longer")
    os.chmod(script, 0o750)
    inode = script.stat().st_ino
    write_file(work, "run.sh", b"new", uid=None)
    assert script.read_bytes() == b"new"
    assert (script.stat().st_ino, stat.S_IMODE(script.stat().st_mode)) == (inode, 0o750)


@pytest.mark.parametrize("kind", ["to a host file", "dangling"])
def test_a_link_as_the_file_is_refused(tree, kind):
    work, host, secret = tree
    target = secret if kind == "to a host file" else host / "created.txt"
    os.symlink(target, work / "input.txt")
    before = fingerprint(host)
    with pytest.raises(UnsafePath, match="symbolic link"):
        write_file(work, "input.txt", b"overwritten", uid=SANDBOX_UID)
    assert fingerprint(host) == before
    assert read_file(work, "input.txt", 100) is None


@pytest.mark.parametrize("path", ["d/new.txt", "d/sub/new.txt", "real/d/new.txt"])
@pytest.mark.parametrize("dangling", [False, True])
def test_a_link_as_a_parent_directory_is_refused(tree, path, dangling):
    work, host, _ = tree
    (work / "real").mkdir()
    target = host / "missing" if dangling else host
    os.symlink(target, work / "d")
    os.symlink(target, work / "real" / "d")
    before = fingerprint(host)
    with pytest.raises(UnsafePath, match="'(real/)?d' is a symbolic link"):
        write_file(work, path, b"x", uid=SANDBOX_UID)
    assert fingerprint(host) == before
    assert read_file(work, path, 100) is None


def test_a_hard_link_or_fifo_is_replaced_not_written_through(tree):
    work, host, secret = tree
    os.link(secret, work / "linked.txt")
    os.mkfifo(work / "pipe")
    before = fingerprint(host)
    write_file(work, "linked.txt", b"mine", uid=None)
    write_file(work, "pipe", b"mine too", uid=None)  # must neither block nor feed the FIFO
    assert fingerprint(host) == before
    assert (work / "linked.txt").read_bytes() == b"mine" and (work / "pipe").is_file()


def test_fetching_a_fifo_returns_nothing_without_blocking(tree):
    work, _, _ = tree
    os.mkfifo(work / "pipe")
    assert read_file(work, "pipe", 100) is None


def test_a_file_in_the_way_of_a_directory_and_back_is_a_clear_error(tree):
    work, _, _ = tree
    write_file(work, "a", b"x", uid=None)
    with pytest.raises(UnsafePath, match="'a' is not a directory"):
        write_file(work, "a/b", b"x", uid=None)
    write_file(work, "d/f", b"x", uid=None)
    with pytest.raises(UnsafePath, match="it is a directory"):
        write_file(work, "d", b"x", uid=None)


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd", "a//b", "./a", "a/..", "a\0b", ""])
def test_paths_that_could_escape_are_refused(tree, path):
    work, _, _ = tree
    with pytest.raises(UnsafePath):
        write_file(work, path, b"x", uid=None)
    assert read_file(work, path, 100) is None
    assert list(work.iterdir()) == []


# A separate process (true parallelism, as a program's would be) that swaps work/d between a
# directory and a link to the host as fast as it can, until its stdin closes.
SWAPPER = """
import os, shutil, sys, threading
work, host = sys.argv[1], sys.argv[2]
d = os.path.join(work, "d")
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
while not stop.is_set():
    for make in (lambda: os.symlink(host, d), lambda: os.mkdir(d)):
        try:
            make()
        except FileExistsError:
            pass
        try:
            if os.path.islink(d):
                os.unlink(d)
            else:
                shutil.rmtree(d)
        except OSError:
            pass
"""


def test_a_directory_swapped_for_a_link_while_writing_never_leaks(tree):
    """The service writes `d/x.txt` again and again while another process swaps `d`."""
    work, host, _ = tree
    before = fingerprint(host)
    swapper = subprocess.Popen(
        [sys.executable, "-c", SWAPPER, str(work), str(host)], stdin=subprocess.PIPE
    )
    written = refused = 0
    try:
        deadline = time.monotonic() + 10  # the swapper takes a moment to start
        while written + refused < 3000 or not (written and refused):
            if time.monotonic() > deadline:
                break
            try:
                write_file(work, "d/x.txt", b"x", uid=None)
                written += 1
            except UnsafePath:
                refused += 1
    finally:
        swapper.stdin.close()
        swapper.wait(timeout=10)
    assert fingerprint(host) == before
    assert written > 0 and refused > 0  # both outcomes happened: the race was real


def test_slot_dir_writes_through_the_helper(tmp_path):
    slot = SlotDir(tmp_path / "slot", 4, None)
    try:
        host = tmp_path / "host"
        host.mkdir()
        os.symlink(host, slot.work / "out")
        with pytest.raises(UnsafePath):
            slot.write_files({"ok.txt": b"1", "out/x": b"2"})
        assert list(host.iterdir()) == []
        assert slot.read_files(["ok.txt", "out/x"], 100) == {"ok.txt": b"1"}
    finally:
        slot.close()
