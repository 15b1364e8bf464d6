"""The bwrap backend's slot executor: one bubblewrap sandbox per slot, kept for many runs, whose
executor starts each run in fresh pid, IPC and mount namespaces.

    service --socketpair--> launcher -> bwrap (user, net, uts, cgroup namespaces of the slot)
                                          -> executor (this C program, pid 2 of the slot)
                                               -> per run: clone(NEWPID | NEWIPC | NEWNS)
                                                    -> the run's init (pid 1): /proc, /dev/shm
                                                         -> the program (pid 2): setsid, fds,
                                                            rlimits, no capabilities,
                                                            no_new_privs, seccomp, execve

A bwrap sandbox per run cost ~5 ms of CPU on top of the ~10 ms a `python3 -c` costs (bwrap's
two processes, a new user and network namespace, the mount tree built again; docs/sandbox.md):
the part the backend's throughput could not get back. Here bwrap starts once per slot and the
executor, a small static C program, forks each run into namespaces of its own: measured
against bare `python3 -c print(1)` in the same cgroup accounting, the same CPU per run within
the noise (docs/performance.md).

What a run gets fresh: its processes (a pid namespace whose init ends with the program, so
nothing of the run outlives it; the executor is outside it and cannot be seen, signalled or
traced from it), its /proc, SysV IPC and POSIX message queues (IPC namespace), /dev/shm (a new
tmpfs of `disk_mb`), its mount table (nothing it mounts could last: it has no capability), and
/work and /tmp (the slot's host dirs, emptied by the service before every run, as before).
What runs of a slot share: the user namespace (one uid), the network namespace (loopback only,
no route out; a socket dies with its process), the host name (read-only without
CAP_SYS_ADMIN) and the cgroup (the service sets its limits per run). The executor holds
CAP_SYS_ADMIN and CAP_SETPCAP inside the slot's user namespace only (to make the namespaces and
mounts); every program drops all capabilities, the bounding set and the ambient set, sets
no_new_privs and installs the seccomp filter before execve, so it runs exactly as a program
of a one-shot bwrap did.

Started as `executor SOCKET_FD FILTER_FD|-1 SHM_BYTES` (the launcher opens the compiled seccomp
filter on FILTER_FD; the executor reads it once). Protocol, one run at a time over a
SOCK_SEQPACKET socketpair whose other end is the service's:

    executor -> {"ready": true}
    service  -> argc, argv..., envc, env..., nlimits, "name=value"... (NUL-terminated strings)
                with 3 fds (the run's stdin, stdout, stderr) or 4 (a control pipe, fd 3)
    executor -> {"pid": n} (the run's init, in the slot's pid namespace), or {"error": "..."}
    executor -> {"exit": status, "ipc_left": false} once the run's init has exited, i.e. once
                every process of the run is gone

so agentrl.sandbox.docker_channel's `ExecutorChannel` and `ContainerProcess` drive it as they
drive a container's executor. A failing step inside the run prints `agentrl-launch: <step>`
on the run's stderr and exits 127 (`sandbox_error`, like the launcher's own failures).

What this module does NOT cover: the limits the slot's cgroup holds (the backend's), killing a
run (the backend SIGKILLs the cgroup's processes other than the sandbox's own), and modes
without a cgroup or with a private slot: those keep a bwrap sandbox per run.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agentrl.common.config import SandboxConfig
from agentrl.sandbox.bwrap_argv import SANDBOX_ENV, Tools, bwrap_args
from agentrl.sandbox.capture import kill_group
from agentrl.sandbox.cgroups import Cgroup
from agentrl.sandbox.docker_channel import ContainerProcess, ExecutorChannel, ExecutorGone
from agentrl.sandbox.launch import SET_LIMIT_C, compile_c
from agentrl.sandbox.workdir import SlotDir

# Processes a slot's pids.max holds beyond a one-shot sandbox's (bwrap's two and the program's):
# the executor and the run's init.
EXTRA_PROCESSES = 2
# Where the executor is bound (read-only) inside the sandbox.
EXECUTOR_PATH = "/.agentrl-executor"
# The executor starts in milliseconds; a loaded host gets this much.
GREETING_TIMEOUT_S = 60.0
# Capabilities the executor keeps inside the slot's user namespace (the programs get none).
EXECUTOR_CAPS = ("CAP_SYS_ADMIN", "CAP_SETPCAP")

EXECUTOR_SOURCE = (
    r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

"""
    + SET_LIMIT_C
    + r"""
#define MAX_MESSAGE (1 << 20)
#define MAX_FIELDS 4096
#define MAX_FDS 4
#define MAX_FILTER 65536

static int sock;
static char message[MAX_MESSAGE];
static char *fields[MAX_FIELDS];
static unsigned char filter_bytes[MAX_FILTER];
static struct sock_fprog filter;
static unsigned long long shm_bytes;

static void fail(int err_fd, const char *step) {
    char line[256];
    int length = snprintf(line, sizeof line, "agentrl-launch: %s: %s\n", step, strerror(errno));
    if (write(err_fd, line, length) < 0) {}
    _exit(127);
}

static void reply(const char *text) {
    while (send(sock, text, strlen(text), MSG_NOSIGNAL) < 0 && errno == EINTR) {}
}

static int status_of(int wait_status) {
    return WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 128 + WTERMSIG(wait_status);
}

static void set_limits(char **limits, int count) {
    for (int i = 0; i < count; i++)
        if (set_limit(limits[i]) != 0)
            fail(2, limits[i]);
}

/* No capability left in any set (ambient, bounding, effective, permitted, inheritable). */
static void drop_capabilities(int err_fd) {
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0)
        fail(err_fd, "ambient capabilities");
    for (int cap = 0; cap <= 63; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
            fail(err_fd, "bounding set");
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &header, data) != 0)
        fail(err_fd, "capabilities");
}

static void drop_privileges(void) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        fail(2, "no_new_privs");
    if (filter.len > 0 && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &filter) != 0)
        fail(2, "seccomp");
}

/* The program: pid 2 of the run's namespaces. */
static void program(int *fds, int num_fds, char **argv, char **env, char **limits, int nlimits) {
    setsid();
    for (int i = 0; i < num_fds; i++)
        if (dup2(fds[i], i) != i)
            fail(fds[2], "fds");
    if (syscall(SYS_close_range, num_fds, ~0U, 0) != 0)
        for (int fd = num_fds; fd < 1024; fd++)
            close(fd);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL);
    set_limits(limits, nlimits);
    if (chdir("/work") != 0)
        fail(2, "chdir /work");
    drop_privileges();
    environ = env;
    execvp(argv[0], argv);
    char line[512];
    int length = snprintf(line, sizeof line, "%s: %s\n", argv[0], strerror(errno));
    if (write(2, line, length) < 0) {}
    _exit(127);
}

/* The run's init: pid 1 of fresh pid, IPC and mount namespaces. */
static void init(int *fds, int num_fds, char **argv, char **env, char **limits, int nlimits) {
    int err_fd = fds[2];
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        fail(err_fd, "pdeathsig");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        fail(err_fd, "mount private");
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
        fail(err_fd, "mount /proc");
    if (shm_bytes > 0) {
        char options[64];
        snprintf(options, sizeof options, "size=%llu,mode=1777", shm_bytes);
        if (mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, options) != 0)
            fail(err_fd, "mount /dev/shm");
    }
    drop_capabilities(err_fd); /* the init needs none to fork and reap */
    pid_t child = fork();
    if (child < 0)
        fail(err_fd, "fork");
    if (child == 0)
        program(fds, num_fds, argv, env, limits, nlimits);
    for (int i = 0; i < num_fds; i++)
        close(fds[i]);
    for (;;) {
        int wait_status;
        pid_t done = waitpid(-1, &wait_status, 0);
        if (done == child)
            _exit(status_of(wait_status));
        if (done < 0 && errno != EINTR)
            _exit(127);
    }
}

static void load_filter(int fd) {
    size_t size = 0;
    ssize_t got;
    while ((got = read(fd, filter_bytes + size, sizeof filter_bytes - size)) > 0)
        size += got;
    close(fd);
    filter.len = size / sizeof(struct sock_filter);
    filter.filter = (struct sock_filter *)filter_bytes;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--check") == 0)
        return 0;
    if (argc != 4) {
        fprintf(stderr, "usage: executor SOCKET_FD FILTER_FD|-1 SHM_BYTES\n");
        return 2;
    }
    sock = atoi(argv[1]);
    if (atoi(argv[2]) >= 0)
        load_filter(atoi(argv[2]));
    shm_bytes = strtoull(argv[3], NULL, 10);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    reply("{\"ready\": true}");
    for (;;) {
        union { struct cmsghdr align; char space[CMSG_SPACE(MAX_FDS * sizeof(int))]; } control;
        struct iovec io = {message, sizeof message - 1};
        struct msghdr header = {0};
        header.msg_iov = &io;
        header.msg_iovlen = 1;
        header.msg_control = control.space;
        header.msg_controllen = sizeof control.space;
        ssize_t got = recvmsg(sock, &header, MSG_CMSG_CLOEXEC);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return got == 0 ? 0 : 1;
        int fds[MAX_FDS], num_fds = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&header); c; c = CMSG_NXTHDR(&header, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                int count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (int i = 0; i < count; i++) {
                    int fd = ((int *)CMSG_DATA(c))[i];
                    if (num_fds < MAX_FDS)
                        fds[num_fds++] = fd;
                    else
                        close(fd);
                }
            }
        message[got] = 0;
        int nfields = 0;
        for (char *p = message; p < message + got && nfields < MAX_FIELDS; p += strlen(p) + 1)
            fields[nfields++] = p;
        const char *error = NULL;
        int at = 0, counts[3], starts[3];
        for (int part = 0; part < 3 && error == NULL; part++) {
            counts[part] = at < nfields ? atoi(fields[at]) : -1;
            starts[part] = ++at;
            if (counts[part] < 0 || at + counts[part] > nfields)
                error = "malformed request";
            else
                at += counts[part];
        }
        if (error == NULL && (num_fds < 3 || counts[0] < 1))
            error = "a request needs 3 or 4 fds and a program";
        if (error != NULL) {
            char text[128];
            snprintf(text, sizeof text, "{\"error\": \"%s\"}", error);
            reply(text);
            for (int i = 0; i < num_fds; i++)
                close(fds[i]);
            continue;
        }
        /* NULL-terminate argv and env in place: the count fields after them are parsed. */
        char **run_argv = fields + starts[0], **env = fields + starts[1];
        char **limits = fields + starts[2];
        char *argv_copy[MAX_FIELDS], *env_copy[MAX_FIELDS];
        memcpy(argv_copy, run_argv, counts[0] * sizeof(char *));
        argv_copy[counts[0]] = NULL;
        memcpy(env_copy, env, counts[1] * sizeof(char *));
        env_copy[counts[1]] = NULL;
        pid_t run = syscall(SYS_clone, CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNS | SIGCHLD,
                            NULL, NULL, NULL, NULL);
        if (run == 0)
            init(fds, num_fds, argv_copy, env_copy, limits, counts[2]);
        int clone_errno = errno;
        for (int i = 0; i < num_fds; i++)
            close(fds[i]);
        char text[160];
        if (run < 0) {
            snprintf(text, sizeof text, "{\"error\": \"clone: %s\"}", strerror(clone_errno));
            reply(text);
            continue;
        }
        snprintf(text, sizeof text, "{\"pid\": %d}", (int)run);
        reply(text);
        int wait_status;
        while (waitpid(run, &wait_status, 0) < 0)
            if (errno != EINTR)
                return 1;
        snprintf(text, sizeof text, "{\"exit\": %d, \"ipc_left\": false}", status_of(wait_status));
        reply(text);
    }
}
"""
)


def build(directory: Path) -> str | None:
    """The executor compiled into `directory` (agentrl.sandbox.launch.compile_c), executable by
    the sandbox uid (it starts inside the sandbox); None where it could not be built (the
    backend then starts a bwrap sandbox per run)."""
    return compile_c(directory, "executor", EXECUTOR_SOURCE, ["--check"], mode=0o755)


def sandbox_argv(
    config: SandboxConfig, tools: Tools, slot_dir: SlotDir, cgroup: Cgroup, socket_fd: int
) -> list[str]:
    """A slot sandbox's argv: the launcher joins the slot's cgroups, opens the seccomp filter
    (for the executor to read) and drops to the sandbox uid; bwrap as for a one-shot run but
    for the executor's capabilities and the filter, which the executor installs in each
    program instead; the executor, bound read-only."""
    assert tools.launcher is not None and tools.executor is not None
    filter_fd = -1
    if tools.seccomp_filter is not None:
        filter_fd = next(n for n in range(3, 10) if n != socket_fd)
    extra = ["--ro-bind", tools.executor, EXECUTOR_PATH]
    for capability in EXECUTOR_CAPS:
        extra += ["--cap-add", capability]
    bwrap = bwrap_args(config, tools.bwrap, slot_dir, tools.sized_tmpfs, tuple(extra))
    argv = [tools.launcher]
    for path in cgroup.procs_files():
        argv += ["-j", str(path)]
    argv += ["-r", "core=0"]
    if filter_fd >= 0:
        argv += ["-f", f"{filter_fd}={tools.seccomp_filter}"]
    if tools.run_as is not None:
        argv += ["-u", str(tools.run_as), "-g", str(tools.run_as)]
    shm_bytes = config.disk_mb << 20
    return [
        *argv,
        "--",
        *bwrap,
        "--",
        EXECUTOR_PATH,
        str(socket_fd),
        str(filter_fd),
        str(shm_bytes),
    ]


def encode(argv: list[str], env: dict[str, str], limits: list[tuple[str, int]]) -> bytes:
    """One request in the executor's format: counted groups of NUL-terminated strings."""
    fields = [
        str(len(argv)),
        *argv,
        str(len(env)),
        *(f"{name}={value}" for name, value in env.items()),
        str(len(limits)),
        *(f"{name}={value}" for name, value in limits),
    ]
    if any("\0" in field for field in fields):
        raise ValueError("a program's argv or environment holds a NUL byte")
    return b"".join(field.encode() + b"\0" for field in fields)


@dataclass
class SlotSandbox:
    """A slot's long-lived bwrap sandbox: bwrap's process, the channel to its executor and the
    host pids of the sandbox's own processes (bwrap's and the executor's), which a run's kill
    spares."""

    proc: subprocess.Popen
    channel: ExecutorChannel
    own_pids: frozenset[int] | None = None
    """None until the executor greeted (`await_ready`)."""

    @classmethod
    def spawn(cls, argv_for: Callable[[int], list[str]]) -> SlotSandbox:
        """Start the sandbox whose argv `argv_for(socket_fd)` gives, without waiting for it
        (a pool starts all its slots' sandboxes first, then waits for them together)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                argv_for(theirs.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=SANDBOX_ENV,
                start_new_session=True,
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        return cls(proc, ExecutorChannel(ours))

    def await_ready(self, cgroup: Cgroup) -> None:
        """Wait for the executor's greeting, then note the sandbox's own processes (all that
        `cgroup` holds then); raises ExecutorGone with bwrap's own words if none came."""
        if self.own_pids is not None:
            return
        try:
            self.channel.await_greeting(GREETING_TIMEOUT_S)
        except ExecutorGone as gone:
            kill_group(self.proc)
            _, error = self.proc.communicate()
            detail = error.decode(errors="replace").strip()[-500:]
            raise ExecutorGone(f"the slot's sandbox did not start: {detail or gone}") from None
        self.own_pids = frozenset(cgroup.pids())

    def run(
        self,
        argv: list[str],
        env: dict[str, str],
        limits: list[tuple[str, int]],
        control: bool = False,
    ) -> ContainerProcess:
        """Start `argv` in fresh pid, IPC and mount namespaces of the sandbox (fd 3: the write
        end of a control pipe with `control`); ExecutorGone if the executor is gone."""
        return self.channel.send_request(encode(argv, env, limits), control)

    def alive(self) -> bool:
        """bwrap still runs (a lost executor shows as a run without its exit report)."""
        return self.proc.poll() is None

    def stop(self) -> None:
        """Kill the sandbox (its runs die with it) and reap bwrap."""
        self.channel.close()
        kill_group(self.proc)
        self.proc.wait()
        if not self.proc.stderr.closed:
            self.proc.stderr.close()
