"""The bwrap backend's seccomp filter: a classic-BPF program that bwrap installs (`--seccomp FD`)
just before it executes the sandboxed program.

Defence in depth: namespaces, dropped capabilities and `--disable-userns` already make most of
these calls fail, but the kernel code behind them still runs and parses the caller's arguments
before it says no; a filter stops the call at the door, so a kernel bug reachable through them is
out of reach. Docker's default profile is the reference for what to deny; the program is
assembled here (no libseccomp needed), readable top to bottom:

    load arch;  arch != this machine's        -> KILL the process (another ABI's numbers differ)
    load nr;    x86-64: nr >= X32_SYSCALL_BIT -> EPERM (the x32 ABI, a second syscall table)
                nr in DENIED                  -> EPERM
                nr == clone3                  -> ENOSYS (libc falls back to clone, checked next)
                nr == clone and flags & NEW_NAMESPACE_FLAGS -> EPERM
    ALLOW

Denied (EPERM, as Docker answers): tracing other processes (ptrace, process_vm_*, kcmp), the
kernel keyring (add_key, request_key, keyctl), mounts and namespaces (mount, umount2,
pivot_root, the new mount API, unshare, setns, clone with CLONE_NEW*), kernel modules and kexec,
bpf, perf_event_open, userfaultfd, io_uring, handles to files by id (name_to_handle_at,
open_by_handle_at), swap, reboot, clocks, host names, quotas, accounting, syslog, fanotify, and
x86-64's port I/O (iopl, ioperm).

What this does NOT cover: argument checks beyond clone's flags (Docker also filters
personality() values and socket families; here the network namespace is empty and
personality() changes only the caller); calls that stay allowed are the whole remaining kernel
surface; architectures other than x86-64 and aarch64 (no filter is built there: the backend says
so at start-up and runs without one); the docker backend (Docker applies its own profile).
"""

from __future__ import annotations

import errno
import os
import platform
import struct
from dataclasses import dataclass

# Classic BPF opcodes (linux/bpf_common.h) used below.
BPF_LD_W_ABS = 0x20  # A = 32-bit word at offset k of struct seccomp_data
BPF_JEQ_K = 0x15  # pc += (A == k) ? jt : jf
BPF_JGE_K = 0x35  # pc += (A >= k) ? jt : jf
BPF_JSET_K = 0x45  # pc += (A & k) ? jt : jf
BPF_RET_K = 0x06  # return k
# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6] (little endian:
# the low 32 bits of args[0] are at 16).
OFFSET_NR, OFFSET_ARCH, OFFSET_ARG0_LOW = 0, 4, 16
# Return values (linux/seccomp.h); ERRNO carries the errno in its low 16 bits.
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
# x86-64 numbers with this bit set are the x32 ABI's table (the same calls, other numbers).
X32_SYSCALL_BIT = 0x40000000
# clone()'s namespace flags (linux/sched.h): NEWTIME, NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
# NEWUSER, NEWPID, NEWNET.
NEW_NAMESPACE_FLAGS = (
    0x80 | 0x20000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
)
# One instruction: u16 code, u8 jt, u8 jf, u32 k.
INSTRUCTION = struct.Struct("=HBBI")
# Jump offsets are 8 bits; the deny list must stay short enough to jump over.
MAX_JUMP = 255

# Syscalls denied with EPERM, by name; the numbers per architecture are in SYSCALL_NUMBERS.
DENIED = (
    # tracing and reading other processes
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    # the kernel keyring (not namespaced)
    "add_key",
    "request_key",
    "keyctl",
    # mounts and namespaces
    "mount",
    "umount2",
    "pivot_root",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    # kernel code and the kernel itself
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "reboot",
    "swapon",
    "swapoff",
    "syslog",
    "acct",
    "quotactl",
    "quotactl_fd",
    "nfsservctl",
    "lookup_dcookie",
    "vhangup",
    "fanotify_init",
    # files by handle (escapes bind mounts with CAP_DAC_READ_SEARCH: defence in depth)
    "name_to_handle_at",
    "open_by_handle_at",
    # clocks and host identity
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    # x86-64 only: port I/O and obsolete module calls
    "iopl",
    "ioperm",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "uselib",
    "_sysctl",
)

# Calls added since Linux 5.1 have one number on every architecture (the unified table).
UNIFIED_SYSCALL_NUMBERS = {
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "mount_setattr": 442,
    "quotactl_fd": 443,
}
# Numbers from the kernel's uapi headers: asm/unistd_64.h (x86-64) and asm-generic/unistd.h
# (aarch64). A name missing for an architecture does not exist there.
SYSCALL_NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": {
        "clone": 56,
        "ptrace": 101,
        "syslog": 103,
        "uselib": 134,
        "vhangup": 153,
        "pivot_root": 155,
        "_sysctl": 156,
        "adjtimex": 159,
        "acct": 163,
        "settimeofday": 164,
        "mount": 165,
        "umount2": 166,
        "swapon": 167,
        "swapoff": 168,
        "reboot": 169,
        "sethostname": 170,
        "setdomainname": 171,
        "iopl": 172,
        "ioperm": 173,
        "create_module": 174,
        "init_module": 175,
        "delete_module": 176,
        "get_kernel_syms": 177,
        "query_module": 178,
        "quotactl": 179,
        "nfsservctl": 180,
        "lookup_dcookie": 212,
        "clock_settime": 227,
        "kexec_load": 246,
        "add_key": 248,
        "request_key": 249,
        "keyctl": 250,
        "unshare": 272,
        "perf_event_open": 298,
        "fanotify_init": 300,
        "name_to_handle_at": 303,
        "open_by_handle_at": 304,
        "clock_adjtime": 305,
        "setns": 308,
        "process_vm_readv": 310,
        "process_vm_writev": 311,
        "kcmp": 312,
        "finit_module": 313,
        "kexec_file_load": 320,
        "bpf": 321,
        "userfaultfd": 323,
        **UNIFIED_SYSCALL_NUMBERS,
    },
    "aarch64": {
        "lookup_dcookie": 18,
        "umount2": 39,
        "mount": 40,
        "pivot_root": 41,
        "nfsservctl": 42,
        "vhangup": 58,
        "quotactl": 60,
        "acct": 89,
        "unshare": 97,
        "kexec_load": 104,
        "init_module": 105,
        "delete_module": 106,
        "clock_settime": 112,
        "syslog": 116,
        "ptrace": 117,
        "reboot": 142,
        "sethostname": 161,
        "setdomainname": 162,
        "settimeofday": 170,
        "adjtimex": 171,
        "add_key": 217,
        "request_key": 218,
        "keyctl": 219,
        "clone": 220,
        "swapon": 224,
        "swapoff": 225,
        "perf_event_open": 241,
        "fanotify_init": 262,
        "name_to_handle_at": 264,
        "open_by_handle_at": 265,
        "clock_adjtime": 266,
        "setns": 268,
        "process_vm_readv": 270,
        "process_vm_writev": 271,
        "kcmp": 272,
        "finit_module": 273,
        "bpf": 280,
        "userfaultfd": 282,
        "kexec_file_load": 294,
        **UNIFIED_SYSCALL_NUMBERS,
    },
}
# AUDIT_ARCH_* (linux/audit.h): what the kernel puts in seccomp_data.arch.
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


@dataclass(frozen=True)
class Instruction:
    code: int
    jt: int = 0
    jf: int = 0
    k: int = 0

    def pack(self) -> bytes:
        assert 0 <= self.jt <= MAX_JUMP and 0 <= self.jf <= MAX_JUMP, self
        return INSTRUCTION.pack(self.code, self.jt, self.jf, self.k)


def machine() -> str:
    """This host's architecture as SYSCALL_NUMBERS names it ('' when there is no table)."""
    name = platform.machine()
    name = {"amd64": "x86_64", "arm64": "aarch64"}.get(name, name)
    return name if name in SYSCALL_NUMBERS else ""


def denied_numbers(arch: str) -> list[int]:
    """The numbers of DENIED calls that exist on `arch`, sorted."""
    numbers = SYSCALL_NUMBERS[arch]
    return sorted({numbers[name] for name in DENIED if name in numbers})


def build_filter(arch: str) -> list[Instruction]:
    """The filter for `arch` (see the module docstring for its shape)."""
    numbers = SYSCALL_NUMBERS[arch]
    denied = denied_numbers(arch)
    errno_perm = RET_ERRNO | errno.EPERM
    program = [
        Instruction(BPF_LD_W_ABS, k=OFFSET_ARCH),
        Instruction(BPF_JEQ_K, jt=1, jf=0, k=AUDIT_ARCH[arch]),
        Instruction(BPF_RET_K, k=RET_KILL_PROCESS),
        Instruction(BPF_LD_W_ABS, k=OFFSET_NR),
    ]
    if arch == "x86_64":
        program += [
            Instruction(BPF_JGE_K, jt=0, jf=1, k=X32_SYSCALL_BIT),
            Instruction(BPF_RET_K, k=errno_perm),
        ]
    # Each listed number jumps forward to the shared EPERM return after the list; the list is
    # followed by: the clone3 check (2), the clone check (3), ALLOW (1), then the EPERM return.
    tail = 2 + 3 + 1
    for index, number in enumerate(denied):
        to_deny = len(denied) - index - 1 + tail
        program.append(Instruction(BPF_JEQ_K, jt=to_deny, jf=0, k=number))
    program += [
        Instruction(BPF_JEQ_K, jt=0, jf=1, k=numbers["clone3"]),
        Instruction(BPF_RET_K, k=RET_ERRNO | errno.ENOSYS),
        Instruction(BPF_JEQ_K, jt=0, jf=2, k=numbers["clone"]),
        Instruction(BPF_LD_W_ABS, k=OFFSET_ARG0_LOW),
        Instruction(BPF_JSET_K, jt=1, jf=0, k=NEW_NAMESPACE_FLAGS),
        Instruction(BPF_RET_K, k=RET_ALLOW),
        Instruction(BPF_RET_K, k=errno_perm),
    ]
    return program


def compiled_filter(arch: str | None = None) -> bytes:
    """The filter as bwrap reads it from `--seccomp FD`: packed `struct sock_filter`s."""
    return b"".join(ins.pack() for ins in build_filter(arch or machine()))


def write_filter(path: os.PathLike | str) -> bool:
    """Write this host's compiled filter to `path` (mode 0644); False when there is no table
    for this architecture (the caller runs without a filter and says so)."""
    arch = machine()
    if not arch:
        return False
    data = compiled_filter(arch)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    return True
