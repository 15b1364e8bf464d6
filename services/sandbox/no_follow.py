"""Reading and writing files in a tree that an untrusted program controls, never through links.

A slot's or session's work dir is written by the service (as root when it runs as root) and
by the sandboxed program, between the calls of a session and even during one (a background
process). Any operation by path name (`Path.write_bytes`, `os.chown(path)`) would follow a
link the program planted and write or chown a host file. So every access here starts from
an fd of the tree's root and walks one component at a time, relative to its parent's fd:

    root fd (O_DIRECTORY|O_NOFOLLOW) -> each directory: openat O_DIRECTORY|O_NOFOLLOW
                                        (mkdirat first if missing) -> the file: openat

- A directory component that is a symlink (to a host dir, dangling, anything) fails with
  ELOOP/ENOTDIR and the write is refused; nothing is created past it.
- The file is opened O_NOFOLLOW|O_NONBLOCK: a symlink there is refused (not replaced, so the
  caller learns its file was not written); an existing regular file with one link is
  truncated in place (mode kept, as before); anything else that is not a directory (a FIFO,
  a socket, a second hard link) is unlinked by name (unlink never follows) and the file is
  created fresh with O_CREAT|O_EXCL|O_NOFOLLOW, so a swap in between fails instead of being
  followed. New files get mode 0o666 and new directories 0o777, less the umask.
- Ownership is given with fchown on the open fd, never by path.
- Reads take only regular files, opened the same way (a FIFO never blocks the service).

Every refusal is an `UnsafePath` (a RequestRejected) naming the path and the reason; the
service answers it as status `rejected`.

What this module does NOT cover: path syntax beyond an invariant check (agentrl.sandbox.limits
normalizes request paths first); the size of what is written (the slot's tmpfs, `disk_mb`);
files already written when a later one in the same request is refused (they stay).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agentrl.sandbox.interface import RequestRejected

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO must neither wait for a reader/writer nor feed one.
FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
FILE_MODE = 0o666
DIR_MODE = 0o777


class UnsafePath(RequestRejected):
    """A path in the work dir that cannot be accessed without following a link or escaping."""


def split_relative(rel: str) -> list[str]:
    """The components of a normalized relative path; refuses anything that could escape."""
    parts = rel.split("/")
    if not rel or "\0" in rel or any(part in ("", ".", "..") for part in parts):
        raise UnsafePath(
            f"file path {rel[:60]!r} must be relative to the work dir, "
            "without '..', '.', empty components or NUL"
        )
    return parts


def write_file(
    root: Path | int, rel: str, data: bytes, uid: int | None, mode: int | None = None
) -> None:
    """Write `data` to `root/rel` (`root`: a path or an open directory fd), creating parent
    directories; `uid` owns what is written; `mode`, when given, is set on the file."""
    parts = split_relative(rel)
    with _walk(root, rel, parts[:-1], create_uid=uid, create=True) as dir_fd:
        fd = _open_for_write(dir_fd, rel, parts[-1])
        try:
            if uid is not None:
                os.fchown(fd, uid, uid)
            if mode is not None:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as error:
            raise UnsafePath(f"cannot write {rel!r} in the work dir: {error.strerror}") from None
        finally:
            os.close(fd)


def read_file(root: Path | int, rel: str, max_bytes: int) -> bytes | None:
    """Content of the regular file `root/rel`, or None if it is missing, a link, special or
    larger than `max_bytes`."""
    try:
        parts = split_relative(rel)
        with _walk(root, rel, parts[:-1], create_uid=None, create=False) as dir_fd:
            fd = os.open(parts[-1], os.O_RDONLY | FILE_FLAGS, dir_fd=dir_fd)
    except (OSError, UnsafePath):
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            return None
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(max_bytes + 1)[:max_bytes]
    finally:
        os.close(fd)


@contextmanager
def _walk(
    root: Path | int, rel: str, dirs: list[str], create_uid: int | None, create: bool
) -> Iterator[int]:
    """An fd of the directory `root/dirs...`, each component opened without following links;
    missing ones are made (and given to `create_uid`) when `create`. An int `root` is an open
    directory fd (left open: the walk works on its own duplicate)."""
    try:
        if isinstance(root, int):
            dir_fd = os.open(".", DIR_FLAGS, dir_fd=root)
        else:
            dir_fd = os.open(root, DIR_FLAGS)
    except OSError as error:
        raise UnsafePath(f"cannot open the work dir: {error.strerror}") from None
    try:
        for depth, name in enumerate(dirs, 1):
            made = False
            if create:
                try:
                    os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
                    made = True
                except FileExistsError:
                    pass  # an existing entry: opening it below checks what it is
                except OSError as error:
                    raise UnsafePath(
                        f"cannot write {rel!r} in the work dir: cannot create "
                        f"{'/'.join(dirs[:depth])!r}: {error.strerror}"
                    ) from None
            try:
                next_fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
            except OSError as error:
                raise UnsafePath(
                    _refusal(dir_fd, name, "/".join(dirs[:depth]), rel, error)
                ) from None
            os.close(dir_fd)
            dir_fd = next_fd
            if made and create_uid is not None:
                os.fchown(dir_fd, create_uid, create_uid)
        yield dir_fd
    finally:
        os.close(dir_fd)


def _open_for_write(dir_fd: int, rel: str, name: str) -> int:
    try:
        fd = os.open(name, os.O_WRONLY | FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return _create(dir_fd, rel, name)
    except OSError as error:
        if error.errno != errno.ENXIO:  # ENXIO: a FIFO without reader or a socket
            raise UnsafePath(_refusal(dir_fd, name, rel, rel, error)) from None
    else:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
            try:
                os.ftruncate(fd, 0)
            except OSError as error:
                os.close(fd)
                raise UnsafePath(
                    f"cannot write {rel!r} in the work dir: {error.strerror}"
                ) from None
            return fd
        os.close(fd)
    # A FIFO, socket or hard-linked file: replace the entry, never write through it.
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as error:
        raise UnsafePath(_refusal(dir_fd, name, rel, rel, error)) from None
    return _create(dir_fd, rel, name)


def _create(dir_fd: int, rel: str, name: str) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | FILE_FLAGS
    try:
        return os.open(name, flags, FILE_MODE, dir_fd=dir_fd)
    except OSError as error:
        raise UnsafePath(_refusal(dir_fd, name, rel, rel, error)) from None


def _refusal(dir_fd: int, name: str, prefix: str, rel: str, error: OSError) -> str:
    """Why `name` (the last component of `prefix`, a prefix of `rel`) could not be opened."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        mode = 0
    if stat.S_ISLNK(mode) or error.errno == errno.ELOOP:
        what = "is a symbolic link; the service never writes through links"
    elif error.errno == errno.ENOTDIR:
        what = "is not a directory"
    elif error.errno == errno.EISDIR:
        what = "is a directory"
    elif error.errno == errno.EEXIST:
        what = "was re-created while being written (a concurrent process)"
    else:
        what = f"cannot be opened: {error.strerror}"
    subject = "it" if prefix == rel else repr(prefix)
    return f"cannot write {rel!r} in the work dir: {subject} {what}"
