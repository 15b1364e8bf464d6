"""Per-slot writable space on the host: the program's /work and /tmp, size-limited and private.

Each slot (or session) owns a directory `<work_root>/<service pid>/<name>/` holding `work/`
(mounted at /work in the sandbox) and `tmp/` (at /tmp). When the service runs as root, that
directory is a tmpfs mounted with `size=disk_mb`, so one program filling "the disk" fills only
its own slot; files belong to the sandbox uid. Between runs the slot is emptied.

The program controls the tree under work/ (and, in a session, keeps controlling it between
calls), so request files are written and fetched files read back through
agentrl.sandbox.no_follow: every path component opened relative to its parent's fd with
O_NOFOLLOW, ownership given with fchown on the open file. A link the program planted (to a
host file or directory, dangling, in a parent component) makes the write a `rejected` request
and a fetch skip the file; it is never followed.

Without root the slot cannot mount a tmpfs. A slot made with `private_ok` (the bwrap backend,
when its bwrap has `--size`) is then *private*: bwrap mounts one tmpfs of `disk_mb` for /work,
/tmp and /dev/shm together inside each run's own mount namespace (agentrl.sandbox.private_tmpfs),
nothing of the run touches the host's disk, and the service reaches /work through a directory
fd it opens from a process of the run (`attach`) and keeps until the run's files are read back
(`detach`). Without a memory cgroup, what a slot's tmpfs holds (mounted or private) counts in
the run's sampled memory (agentrl.sandbox.run_watch).

`sweep_stale` frees what a crashed service process left (its cgroups, its mounted work dirs);
`check_traversable` checks that the sandbox uid can reach the slot dirs.

What this module does NOT cover: a slot neither mounted nor private (docker without root,
bwrap without `--size`) is bounded only by the per-file RLIMIT_FSIZE the backend sets, so
many files can still fill the host disk; inode counts are bounded only by the tmpfs size.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from agentrl.common.logging import get_logger
from agentrl.sandbox.cgroups import CgroupParent
from agentrl.sandbox.no_follow import read_file, write_file
from agentrl.sandbox.private_tmpfs import open_work

log = get_logger(__name__)

# Names of the service's cgroups: the prefix, then `<pid>-<random>` of the owning process.
CGROUP_PREFIX = "agentrl-sandbox-"
# A compiled binary carried from a private slot's compile run into its program's run.
EXECUTABLE_MODE = 0o755


class SlotDir:
    """The host directories behind one sandbox's /work and /tmp."""

    def __init__(self, root: Path, disk_mb: int, uid: int | None, private_ok: bool = False) -> None:
        self.root = root
        self.uid = uid
        self.work = root / "work"
        self.tmp = root / "tmp"
        root.mkdir(parents=True, exist_ok=True)
        self.mounted = False
        if os.geteuid() == 0:
            owner = f",uid={uid},gid={uid}" if uid is not None else ""
            # mode 0711: the sandbox uid traverses the root but lists nothing it does not own.
            result = subprocess.run(
                [
                    "mount",
                    "-t",
                    "tmpfs",
                    "-o",
                    f"size={disk_mb}m,mode=0711,nosuid,nodev{owner}",
                    "agentrl-sandbox",
                    str(root),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            self.mounted = result.returncode == 0
            if not self.mounted:
                log.warning(
                    "tmpfs mount failed; disk use is limited per file only",
                    extra={"path": str(root), "error": result.stderr.strip()},
                )
        if self.mounted:
            os.chown(root, 0, 0)
        os.chmod(root, 0o711)
        self.private = private_ok and not self.mounted
        """/work and /tmp are tmpfs mounts in each run's namespace, reached through `work_fd`."""
        self.work_fd = -1
        self.clear()

    def attach(self, pid: int) -> None:
        """Open the private /work that process `pid` (inside a run of this slot) sees."""
        self.detach()
        self.work_fd = open_work(pid)

    def detach(self) -> None:
        """Let go of the run's private /work (its memory is freed once the run has exited)."""
        if self.work_fd >= 0:
            os.close(self.work_fd)
            self.work_fd = -1

    def _work(self) -> Path | int:
        """Where request files go: the attached private /work, or the host's work/."""
        if not self.private:
            return self.work
        if self.work_fd < 0:
            raise RuntimeError("a private slot's work dir is reached only while a run is attached")
        return self.work_fd

    def clear(self) -> None:
        """Empty work/ and tmp/ in place and give them back their owner and mode 0700.

        In place: the directories themselves stay (same inode), because the docker backend
        bind-mounts them into a long-lived container once. Symlink-safe: links are unlinked,
        never followed (shutil.rmtree does not follow them on Linux). A private slot has no
        host dirs: its run's tmpfs goes with the run."""
        if self.private:
            self.detach()
            return
        for path in (self.work, self.tmp):
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                path.unlink()
            path.mkdir(mode=0o700, exist_ok=True)
            with os.scandir(path) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            shutil.rmtree(entry.path)
                        else:
                            os.unlink(entry.path)
                    except OSError:
                        log.warning("could not remove %s", entry.path, exc_info=True)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, 0o700)
                if self._owner() is not None:
                    os.fchown(fd, self.uid, self.uid)
            finally:
                os.close(fd)

    def is_empty(self, which: str = "tmp") -> bool:
        """Whether tmp/ (or work/) holds nothing (a cheap check the docker backend uses)."""
        with os.scandir(self.tmp if which == "tmp" else self.work) as entries:
            return next(entries, None) is None

    def write_files(self, files: dict[str, bytes], executable: tuple[str, ...] = ()) -> None:
        """Write request files (paths already normalized) into work/, never through a link
        (those in `executable` with mode 0755); raises UnsafePath (a RequestRejected) for a
        path it refuses."""
        for rel, data in files.items():
            mode = EXECUTABLE_MODE if rel in executable else None
            write_file(self._work(), rel, data, self._owner(), mode)

    def _owner(self) -> int | None:
        """The uid given what the service writes: the sandbox's, when root can give it."""
        return self.uid if self.uid is not None and os.geteuid() == 0 else None

    def read_files(self, paths: list[str], max_total_bytes: int) -> dict[str, bytes]:
        """Regular files among `paths` (missing, special or linked ones are skipped)."""
        found: dict[str, bytes] = {}
        total = 0
        for rel in paths:
            data = read_file(self._work(), rel, max_total_bytes - total)
            if data is not None:
                found[rel] = data
                total += len(data)
        return found

    def close(self) -> None:
        self.detach()
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def sweep_stale(work_root: Path) -> None:
    """Free what a crashed service process left: its cgroups and its mounted work dirs
    (instance dirs are named `<pid>-<random>` by both backends)."""
    CgroupParent.sweep_stale(CGROUP_PREFIX)
    if not work_root.is_dir():
        return
    for instance in work_root.iterdir():
        pid = instance.name.split("-")[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        for slot_dir in instance.iterdir():
            subprocess.run(["umount", "-l", str(slot_dir)], capture_output=True, check=False)
        shutil.rmtree(instance, ignore_errors=True)


def check_traversable(path: Path) -> None:
    """bwrap runs as the sandbox uid and must reach the slot dirs through every parent."""
    for parent in [path, *path.parents]:
        if not os.stat(parent).st_mode & 0o001:
            raise ValueError(
                f"work_root: {parent} is not traversable by other users (mode o+x), so the "
                f"sandbox uid cannot reach {path}; choose another work_root or chmod o+x it"
            )
