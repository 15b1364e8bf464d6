"""The service's end of a container's executor (agentrl.sandbox.docker_executor).

`ExecutorChannel.connect` dials the executor's socket through the host directory bind-mounted
at /run/agentrl in the container (the executor accepts that one connection and then removes the
socket). `start(argv, env)` makes three pipes, sends the program's ends with the request
(SCM_RIGHTS) and returns a `ContainerProcess` holding the service's ends, which
agentrl.sandbox.capture.drive pumps like a Popen's: the program's output never passes through
the executor, dockerd or any other process. `ContainerProcess.wait()` reads the executor's exit
report (the status, whether SysV IPC objects were left).

A lost executor (it died, the container stopped) reads as EOF on the connection: `start` raises
`ExecutorGone`, and `wait` returns with `lost` set, so the caller recycles the container.

What this module does NOT cover: killing a program (the pid it gets is the container's own; the
caller kills through the container's cgroup) and limits (the caller's, on the cgroups).
"""

from __future__ import annotations

import array
import json
import os
import select
import socket
import time
from pathlib import Path

# Where the executor's socket appears on the host, inside the container's control directory.
SOCKET_NAME = "executor.sock"
# The executor starts with the container; python's start-up on a loaded host takes ~0.1-1 s.
CONNECT_TIMEOUT_S = 60.0
# A request is answered once the program is forked (milliseconds); a loaded host gets slack.
START_TIMEOUT_S = 30.0
# The exit report follows the program's exit at once (the executor's SIGKILL of leftovers, an
# ipcrm when SysV objects exist); the caller waits this long after the output pipes closed.
EXIT_TIMEOUT_S = 30.0
MAX_REPLY_BYTES = 4096


class ExecutorGone(RuntimeError):
    """The container's executor no longer answers (it died, or the container stopped)."""


class ExecutorChannel:
    """The one connection to one container's executor; one program at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.busy = False

    @classmethod
    def connect(cls, control_dir: Path, timeout_s: float = CONNECT_TIMEOUT_S) -> ExecutorChannel:
        """Dial the executor (retrying until its socket exists) and wait for its greeting."""
        # Through /proc/self/fd: the host path can pass the 107 bytes a socket address holds.
        dir_fd = os.open(control_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                try:
                    sock.connect(f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}")
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    sock.close()
                    if time.monotonic() > deadline:
                        raise ExecutorGone(
                            f"the container's executor did not listen within {timeout_s:g} s"
                        ) from None
                    time.sleep(0.05)
        finally:
            os.close(dir_fd)
        channel = cls(sock)
        channel.await_greeting(max(0.0, deadline - time.monotonic()))
        return channel

    def await_greeting(self, timeout_s: float) -> None:
        """Read the executor's first message, {"ready": true}; closes the channel and raises
        ExecutorGone if another or none came."""
        try:
            if not self._reply(timeout_s).get("ready"):
                raise ExecutorGone("the executor sent no greeting")
        except ExecutorGone:
            self.close()
            raise

    def start(
        self, argv: list[str], env: dict[str, str], control: bool = False
    ) -> ContainerProcess:
        """Start `argv` in the container; its stdin, stdout and stderr are pipes to here. With
        `control` it also gets fd 3, the write end of a pipe whose read end is the process's
        `control` (a session's interpreter reports on it: agentrl.sandbox.session_kernel)."""
        return self.send_request(json.dumps({"argv": argv, "env": env}).encode(), control)

    def send_request(self, message: bytes, control: bool = False) -> ContainerProcess:
        """`start` with the request already encoded (the bwrap slot executor's format differs:
        agentrl.sandbox.slot_executor)."""
        assert not self.busy, "one program at a time per container"
        ends = [os.pipe2(os.O_CLOEXEC) for _ in range(4 if control else 3)]
        theirs = [ends[0][0], *(end[1] for end in ends[1:])]
        ours = [ends[0][1], *(end[0] for end in ends[1:])]
        try:
            self.sock.sendmsg(
                [message],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", theirs).tobytes())],
            )
        except OSError as exc:
            for fd in theirs + ours:
                os.close(fd)
            raise ExecutorGone(f"the container's executor is gone ({exc})") from None
        for fd in theirs:
            os.close(fd)
        process = ContainerProcess(self, *ours[:3])
        process.control = ours[3] if control else -1
        try:
            reply = self._reply(START_TIMEOUT_S)
        except ExecutorGone:
            process.close()
            if process.control >= 0:
                os.close(process.control)
            raise
        if "pid" not in reply:
            process.close()
            if process.control >= 0:
                os.close(process.control)
            raise ExecutorGone(f"the executor did not start the program: {reply.get('error')}")
        self.busy = True
        process.pid = reply["pid"]
        return process

    def _reply(self, timeout_s: float) -> dict:
        if self.sock.fileno() < 0:
            raise ExecutorGone("the connection to the executor is closed")
        ready, _, _ = select.select([self.sock], [], [], timeout_s)
        if not ready:
            raise ExecutorGone(f"the container's executor did not answer within {timeout_s:g} s")
        try:
            data = self.sock.recv(MAX_REPLY_BYTES)
        except OSError as exc:
            raise ExecutorGone(f"the container's executor is gone ({exc})") from None
        if not data:
            raise ExecutorGone("the container's executor closed its connection")
        return json.loads(data)

    def alive(self) -> bool:
        """Whether the executor can still be expected to answer: the connection is open and
        holds nothing unread (a report before its program exited, or EOF: it died)."""
        if self.sock.fileno() < 0:
            return False
        ready, _, _ = select.select([self.sock], [], [], 0)
        return not ready

    def close(self) -> None:
        self.sock.close()


class ContainerProcess:
    """A program the executor started: the service's ends of its pipes (`stdin`, `stdout`,
    `stderr`, as a Popen has them) and its exit status from the executor's report."""

    def __init__(self, channel: ExecutorChannel, stdin: int, stdout: int, stderr: int) -> None:
        self.channel = channel
        self.stdin = open(stdin, "wb", buffering=0)  # noqa: SIM115 - closed by drive or close()
        self.stdout = open(stdout, "rb", buffering=0)  # noqa: SIM115
        self.stderr = open(stderr, "rb", buffering=0)  # noqa: SIM115
        self.pid = 0
        """The program's pid in the container's pid namespace (not the host's)."""
        self.returncode: int | None = None
        self.ipc_left = False
        """The executor's report: SysV IPC objects still exist after it removed the run's."""
        self.lost = False
        """The executor never reported (it died): the outcome is unknown."""
        self.control = -1
        """The read end of the program's fd 3 when started with `control` (the caller's to
        close), else -1."""

    def poll(self) -> int | None:
        """The exit status if the executor reported it already (-1 if it is gone), else None."""
        if self.returncode is None and not self.lost:
            ready, _, _ = select.select([self.channel.sock], [], [], 0)
            if ready:
                self.wait()
        return -1 if self.lost else self.returncode

    def reported_within(self, timeout_s: float) -> bool:
        """Whether the executor's exit report is there or comes within `timeout_s` (unread;
        a closed connection counts as reported: `wait` then returns at once)."""
        if self.returncode is not None or self.lost or self.channel.sock.fileno() < 0:
            return True
        ready, _, _ = select.select([self.channel.sock], [], [], timeout_s)
        return bool(ready)

    def wait(self, timeout_s: float = EXIT_TIMEOUT_S) -> int:
        """The exit status (the shell's: 128 + signal); -1 with `lost` set if none came."""
        if self.returncode is not None or self.lost:
            return -1 if self.returncode is None else self.returncode
        try:
            report = self.channel._reply(timeout_s)
            self.returncode, self.ipc_left = int(report["exit"]), bool(report["ipc_left"])
        except (ExecutorGone, KeyError, ValueError):
            self.lost = True
            return -1
        finally:
            self.channel.busy = False
        return self.returncode

    def close(self) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            if not stream.closed:
                stream.close()
