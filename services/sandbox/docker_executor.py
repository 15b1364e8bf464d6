"""Runs INSIDE each docker sandbox container: the executor that starts every program of it.

The container's command (under docker-init) is `python3 -I -c <this file> <uid> <gid>`, as uid
0 with only CAP_SETUID and CAP_SETGID (agentrl.sandbox.docker_pool). It listens on
/run/agentrl/executor.sock (a host directory, mode 0700 root), accepts exactly one connection,
the service's, then closes the listener and unlinks the socket, so nothing else can ever reach
it. One run at a time, over that SOCK_SEQPACKET connection:

    service -> {"argv": [...], "env": {...}} with 3 fds (the run's stdin, stdout, stderr pipes)
               or 4 (a session's interpreter: the 4th is its control pipe, fd 3 in the program)
    executor -> {"pid": n}  (or {"error": "..."}: nothing started)
    ... the program runs; the service drives the pipes (deadline, output cap) itself ...
    executor -> {"exit": status, "ipc_left": bool}  once the program exited

The program is forked in a session of its own with the fds as 0, 1, 2 (and 3) and no other fd
(the connection is never inherited), as `uid:gid` with no supplementary groups (setresuid:
real, effective and saved, so it holds no capability and cannot get uid 0 back), in /work, with
SIGPIPE and SIGXFSZ at their defaults and oom_score_adj 1000 (the OOM killer takes the program,
not the executor). When it exits, the executor SIGKILLs every process of
the sandbox uid (kill(-1) with that uid as its effective uid, so the children that called
setsid() die with it and release the output pipes), removes the SysV IPC objects the run made
(ipcrm as the sandbox uid, only when /proc/sysvipc lists some) and reports whether any remain.
An exit status is the shell's: 128 + the signal for a killed program.

Why a program cannot reach or tamper with it: the executor's real, effective and saved uids are
0, so a program (another uid, no capability) can neither signal, ptrace nor read its /proc
entries; the socket directory is closed to the program's uid and the socket is gone from it
anyway. If the executor dies (the OOM killer may pick it), the connection closes and the service
recycles the container.

What this does NOT cover: limits (the service sets them on the container's cgroups and enforces
the deadline and output cap on the pipes); it runs whatever argv the service sends.
"""

import array
import json
import os
import signal
import socket
import subprocess
import sys

SOCKET_DIR = "/run/agentrl"
SOCKET_PATH = SOCKET_DIR + "/executor.sock"
# One request: argv (a compiler line or an interpreter with its source) and the environment.
MAX_MESSAGE_BYTES = 1 << 20
NUM_FDS = 3
# A session's interpreter (agentrl.sandbox.session_kernel) also gets its control pipe, as fd 3.
MAX_FDS = 4
# The kernel's highest OOM badness bias, given to every program.
OOM_SCORE_ADJ = 1000
# The kernel's lists of SysV IPC objects in this container's IPC namespace; one header line each.
SYSV_IPC_FILES = ("/proc/sysvipc/shm", "/proc/sysvipc/sem", "/proc/sysvipc/msg")


def _receive(conn):
    """One request and its fds; (None, []) when the service closed the connection."""
    fds = array.array("i")
    data, ancillary, _, _ = conn.recvmsg(MAX_MESSAGE_BYTES, socket.CMSG_SPACE(MAX_FDS * 4))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return (json.loads(data) if data else None), list(fds)


def _start(argv, env, fds, uid, gid):
    """Fork the program with `fds` as its stdin, stdout and stderr; returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: until execve it runs this file's code, as root
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.set_inheritable(target, True)  # dup2 onto itself keeps a close-on-exec flag
        os.closerange(len(fds), os.sysconf("SC_OPEN_MAX"))
        # The OOM killer picks the program's processes before the executor (a program may
        # lower this back to 0, not below: it then weighs like the executor, by size).
        with open("/proc/self/oom_score_adj", "w") as adjust:
            adjust.write(str(OOM_SCORE_ADJ))
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        os.chdir("/work")
        for number in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(number, signal.SIG_DFL)
        os.execvpe(argv[0], argv, env)
    except BaseException as error:  # noqa: BLE001 - the shell's "cannot execute", then out
        try:
            os.write(2, f"{argv[0]}: {error}\n".encode())
        finally:
            os._exit(127)


def _status(wait_status):
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def _ipc_objects():
    lines = 0
    for path in SYSV_IPC_FILES:
        with open(path) as listing:
            lines += sum(1 for line in listing if line.strip())
    return lines - len(SYSV_IPC_FILES)


def _end_run(uid, gid):
    """Kill what is left of the run; True if SysV IPC objects remain after removing them."""
    # The effective uid alone: kill(-1) then reaches that uid's processes (and root's, of which
    # the container has none but PID 1, which kill(-1) skips), while the real and saved uids
    # stay 0, so that no program can signal the executor in the meantime.
    os.setresuid(0, uid, 0)
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.setresuid(0, 0, 0)
    if _ipc_objects() > 0:
        subprocess.run(
            ["ipcrm", "--all"],
            user=uid,
            group=gid,
            extra_groups=[],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    return _ipc_objects() > 0


def _accept_once():
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if os.path.exists(SOCKET_PATH):
        os.unlink(SOCKET_PATH)
    listener.bind(SOCKET_PATH)
    os.chmod(SOCKET_PATH, 0o600)
    listener.listen(1)
    conn, _ = listener.accept()
    listener.close()
    os.unlink(SOCKET_PATH)
    return conn


def main():
    uid, gid = int(sys.argv[1]), int(sys.argv[2])
    conn = _accept_once()
    conn.sendall(json.dumps({"ready": True}).encode())
    while True:
        request, fds = _receive(conn)
        if request is None:
            return
        try:
            if not NUM_FDS <= len(fds) <= MAX_FDS:
                conn.sendall(json.dumps({"error": f"{len(fds)} fds, not 3 or 4"}).encode())
                continue
            pid = _start(request["argv"], request["env"], fds, uid, gid)
        finally:
            for fd in fds:
                os.close(fd)
        conn.sendall(json.dumps({"pid": pid}).encode())
        _, wait_status = os.waitpid(pid, 0)
        ipc_left = _end_run(uid, gid)
        conn.sendall(json.dumps({"exit": _status(wait_status), "ipc_left": ipc_left}).encode())


if __name__ == "__main__":
    main()
