"""Per-slot writable space on the host: the program's /work and /tmp, size-limited and private.

Each slot (or session) owns a directory `<work_root>/<service pid>/<name>/` holding `work/`
(mounted at /work in the sandbox) and `tmp/` (at /tmp). When the service runs as root, that
directory is a tmpfs mounted with `size=disk_mb`, so one program filling "the disk" fills only
its own slot; files belong to the sandbox uid. Between runs the slot is emptied.

Reading files back is done as root from a tree the untrusted program controlled, so every path
component is opened with O_NOFOLLOW relative to its parent's fd (a symlink to /etc/shadow or a
FIFO is skipped, never followed or blocked on).

`sweep_stale` frees what a crashed service process left (its cgroups, its mounted work dirs);
`check_traversable` checks that the sandbox uid can reach the slot dirs.

What this module does NOT cover: without root (no tmpfs mount) the size limit is only the
per-file RLIMIT_FSIZE the backend sets, so many files can still fill the host disk; inode
counts are bounded only by the tmpfs size.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from agentrl.common.logging import get_logger
from agentrl.sandbox.cgroups import CgroupParent

log = get_logger(__name__)

# Names of the service's cgroups: the prefix, then `<pid>-<random>` of the owning process.
CGROUP_PREFIX = "agentrl-sandbox-"


class SlotDir:
    """The host directories behind one sandbox's /work and /tmp."""

    def __init__(self, root: Path, disk_mb: int, uid: int | None) -> None:
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
                ["mount", "-t", "tmpfs", "-o", f"size={disk_mb}m,mode=0711,nosuid,nodev{owner}",
                 "agentrl-sandbox", str(root)],
                capture_output=True, text=True, check=False,
            )
            self.mounted = result.returncode == 0
            if not self.mounted:
                log.warning("tmpfs mount failed; disk use is limited per file only",
                            extra={"path": str(root), "error": result.stderr.strip()})
        if self.mounted:
            os.chown(root, 0, 0)
        os.chmod(root, 0o711)
        self.clear()

    def clear(self) -> None:
        """Empty work/ and tmp/ in place and give them back their owner and mode 0700.

        In place: the directories themselves stay (same inode), because the docker backend
        bind-mounts them into a long-lived container once. Symlink-safe: links are unlinked,
        never followed (shutil.rmtree does not follow them on Linux)."""
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
            os.chmod(path, 0o700)
            if self.uid is not None and os.geteuid() == 0:
                os.chown(path, self.uid, self.uid)

    def is_empty(self, which: str = "tmp") -> bool:
        """Whether tmp/ (or work/) holds nothing (a cheap check the docker backend uses)."""
        with os.scandir(self.tmp if which == "tmp" else self.work) as entries:
            return next(entries, None) is None

    def write_files(self, files: dict[str, bytes]) -> None:
        """Write request files (paths already normalized) into a freshly cleared work/."""
        for rel, data in files.items():
            target = self.work / rel
            parent = target.parent
            if not parent.exists():
                parent.mkdir(parents=True)
                for made in [parent, *parent.parents]:
                    if made == self.work:
                        break
                    self._own(made)
            target.write_bytes(data)
            self._own(target)

    def _own(self, path: Path) -> None:
        if self.uid is not None and os.geteuid() == 0:
            os.chown(path, self.uid, self.uid)

    def read_files(self, paths: list[str], max_total_bytes: int) -> dict[str, bytes]:
        """Regular files among `paths` (missing, special or linked ones are skipped)."""
        found: dict[str, bytes] = {}
        total = 0
        for rel in paths:
            data = read_no_follow(self.work, rel, max_total_bytes - total)
            if data is not None:
                found[rel] = data
                total += len(data)
        return found

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def read_no_follow(base: Path, rel: str, max_bytes: int) -> bytes | None:
    """Content of the regular file `base/rel`, never following a symlink, or None."""
    parts = rel.split("/")
    flags_dir = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        dir_fd = os.open(base, flags_dir)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, flags_dir, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        os.close(dir_fd)
        return None
    os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            return None
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(max_bytes + 1)[:max_bytes]
    finally:
        os.close(fd)


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
                f"sandbox uid cannot reach {path}; choose another work_root or chmod o+x it")
