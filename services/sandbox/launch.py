"""The sandbox's launcher: one small exec that joins the cgroups, sets rlimits, drops to the
sandbox uid and executes bwrap, in place of a shell prologue and setpriv.

    launch -j .../memory/<slot>/cgroup.procs ... -r core=0 -r fsize=N -r nofile=1024 -r cpu=S
           [-r as=N] [-u UID -g GID] [-f FD=<seccomp filter>] -- bwrap ...

Each bwrap sandbox used to start as `sh -c 'echo $$ > ...; ulimit ...; exec "$@" N<filter'`
then `setpriv --reuid --regid --clear-groups` then bwrap: two dynamically linked programs
whose start-up (loader, libc, libcap-ng, locale) cost ~2.3 ms of CPU per run here, more than
the work they do. `LAUNCH_SOURCE` does the same steps in the same order in ~60 lines of C,
linked statically where the host's libc allows it:

1. writes its own pid to every `-j` file (the slot's cgroup.procs, one per controller), so
   nothing it executes ever runs outside the slot's cgroups;
2. sets each `-r` rlimit, soft and hard alike (as sh's `ulimit` does);
3. opens each `-f` file read-only on exactly that fd, without close-on-exec (bwrap's
   `--seccomp FD` reads the filter from it and closes it before the program runs);
4. with `-u`/`-g`: clears the supplementary groups, then setresgid, then setresuid (real,
   effective and saved alike, as setpriv does), and checks that the uid cannot be regained;
5. execv's the argv after `--` with the environment it was given.

Any failure prints `agentrl-launch: <step>: <error>` on stderr and exits 127 before anything is
executed (the backend reports it as `sandbox_error`, like bwrap's own `bwrap: ...` lines).

`build` compiles the source with the host's C compiler (once per process) into a directory
only the service can write (the backend's instance dir), and runs it once (`-- /bin/true`) to
check it executes there (a noexec mount, a missing static libc); without a compiler, or if
that fails, it returns None and the backend keeps the shell prologue and setpriv
(agentrl.sandbox.bwrap_argv), which enforce the same limits, more slowly.

What this does NOT cover: it confines nothing itself (bwrap does; the limits are the
backend's); it is not setuid and never installed: each service process builds its own copy.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

from agentrl.common.logging import get_logger

log = get_logger(__name__)

# What a failing step prints first; the backend classifies such a run as sandbox_error.
FAILURE_PREFIX = b"agentrl-launch: "
# gcc compiles the ~60 lines in well under a second; a loaded host gets this much.
BUILD_TIMEOUT_S = 60.0
# The binaries this process compiled, by name: each backend gets a copy in its own dir.
_compiled: dict[str, bytes] = {}
_lock = threading.Lock()
# One rlimit given as "name=value" (the kernel's unit), soft and hard alike: the launcher's
# `-r` and the slot executor's per-run limits (agentrl.sandbox.slot_executor) share it.
SET_LIMIT_C = r"""
static const struct { const char *name; int resource; } LIMITS[] = {
    {"core", RLIMIT_CORE}, {"fsize", RLIMIT_FSIZE}, {"nofile", RLIMIT_NOFILE},
    {"cpu", RLIMIT_CPU}, {"as", RLIMIT_AS},
};

/* 0, or -1 with errno set (EINVAL: an unknown name or a value that is not a number). */
static int set_limit(const char *spec) {
    const char *equals = strchr(spec, '=');
    size_t known = sizeof LIMITS / sizeof LIMITS[0], k = 0;
    for (; equals && k < known; k++)
        if (strlen(LIMITS[k].name) == (size_t)(equals - spec)
            && strncmp(LIMITS[k].name, spec, equals - spec) == 0)
            break;
    char *end;
    errno = 0;
    unsigned long long value = equals ? strtoull(equals + 1, &end, 10) : 0;
    if (equals == NULL || k == known || errno || end == equals + 1 || *end
        || equals[1] == '-') {
        errno = EINVAL;
        return -1;
    }
    struct rlimit limit;
    limit.rlim_cur = limit.rlim_max = value;
    return setrlimit(LIMITS[k].resource, &limit);
}
"""
LAUNCH_SOURCE = (
    r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
"""
    + SET_LIMIT_C
    + r"""

static void fail(const char *step, const char *what) {
    fprintf(stderr, "agentrl-launch: %s %s: %s\n", step, what, strerror(errno));
    _exit(127);
}

static unsigned long long number(const char *text, const char *what) {
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno || end == text || *end || *text == '-') {
        errno = EINVAL;
        fail("number", what);
    }
    return value;
}

int main(int argc, char **argv) {
    long long uid = -1, gid = -1;
    int i = 1;
    for (; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
        const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (value == NULL || flag[0] != '-' || flag[1] == 0 || flag[2] != 0) {
            errno = EINVAL;
            fail("argument", flag);
        }
        if (flag[1] == 'j') {
            char pid[32];
            int length = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
            int fd = open(value, O_WRONLY | O_CLOEXEC);
            if (fd < 0 || write(fd, pid, length) != length || close(fd) != 0)
                fail("join", value);
        } else if (flag[1] == 'r') {
            if (set_limit(value) != 0)
                fail("rlimit", value);
        } else if (flag[1] == 'f') {
            const char *equals = strchr(value, '=');
            if (equals == NULL) {
                errno = EINVAL;
                fail("open", value);
            }
            int target = (int)number(strndupa(value, equals - value), value);
            int fd = open(equals + 1, O_RDONLY);
            if (fd < 0)
                fail("open", equals + 1);
            if (fd != target && (dup2(fd, target) != target || close(fd) != 0))
                fail("open", value);
        } else if (flag[1] == 'u') {
            uid = (long long)number(value, "uid");
        } else if (flag[1] == 'g') {
            gid = (long long)number(value, "gid");
        } else {
            errno = EINVAL;
            fail("argument", flag);
        }
    }
    if (i + 1 >= argc) {
        errno = EINVAL;
        fail("argument", "-- PROGRAM");
    }
    if ((uid < 0) != (gid < 0)) {
        errno = EINVAL;
        fail("argument", "-u and -g go together");
    }
    if (uid >= 0) {
        if (setgroups(0, NULL) != 0)
            fail("drop", "groups");
        if (setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) != 0)
            fail("drop", "gid");
        if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0)
            fail("drop", "uid");
        if (uid != 0 && setuid(0) == 0) {
            errno = EPERM;
            fail("drop", "uid 0 regained");
        }
    }
    execv(argv[i + 1], argv + i + 1);
    fail("exec", argv[i + 1]);
    return 127;
}
"""
)


def build(directory: Path) -> str | None:
    """The launcher as a mode 0700 binary in `directory` (the service's own), checked to run
    there; its path, or None (the backend then uses sh and setpriv). Compiled once per
    process; later backends get a copy of the same binary."""
    binary = compile_c(directory, "launch", LAUNCH_SOURCE, ["--", "/bin/true"])
    if binary is None:
        log.warning("sandboxes start through sh and setpriv (slower): no launcher")
    return binary


def compile_c(
    directory: Path, name: str, source: str, check_args: list[str], mode: int = 0o700
) -> str | None:
    """`source` compiled into `directory`/`name` (`mode`; statically where the host's libc
    allows), checked to run there with `check_args`; its path, or None with a warning saying
    why. Compiled once per process and name; later calls copy the same binary."""
    binary = directory / name
    with _lock:
        errors = []
        if name in _compiled:
            binary.write_bytes(_compiled[name])
            binary.chmod(mode)
            error = _run([str(binary), *check_args])
            if error is None:
                return str(binary)
            errors.append(error)
        else:
            compiler = shutil.which("cc") or shutil.which("gcc")
            if compiler is None:
                errors.append("no C compiler (cc)")
            source_path = directory / f"{name}.c"
            source_path.write_text(source)
            # Static first: no loader and no shared libc to map on each of thousands of starts.
            for flags in (["-static"], []) if compiler else ():
                error = _run([compiler, "-O2", *flags, "-o", str(binary), str(source_path)])
                if error is None:
                    binary.chmod(mode)
                    error = _run([str(binary), *check_args])
                    if error is None:
                        _compiled[name] = binary.read_bytes()
                        return str(binary)
                errors.append(error)
    log.warning(f"could not build the sandbox's {name}", extra={"error": " | ".join(errors)})
    return None


def _run(argv: list[str]) -> str | None:
    """None when `argv` exits 0, else what went wrong."""
    try:
        result = subprocess.run(argv, capture_output=True, timeout=BUILD_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    if result.returncode == 0:
        return None
    return result.stderr.decode(errors="replace").strip()[-500:] or f"exit {result.returncode}"
