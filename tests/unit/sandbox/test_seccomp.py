"""The seccomp filter's program: numbers from the kernel's headers, jumps that land where the
module docstring says (checked by running the program in a small BPF interpreter here)."""

import errno
import re
import struct
from pathlib import Path

import pytest

from agentrl.sandbox import seccomp

HEADERS = {
    "x86_64": Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
    "aarch64": Path("/usr/include/asm-generic/unistd.h"),
}


def header_numbers(path: Path) -> dict[str, int]:
    text = path.read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)\b", text)}


@pytest.mark.parametrize("arch", sorted(HEADERS))
def test_numbers_match_the_kernel_headers(arch):
    """linux-libc-dev (pulled in by g++, which the sandbox runtime needs) has both headers."""
    numbers = header_numbers(HEADERS[arch])
    for name, number in seccomp.SYSCALL_NUMBERS[arch].items():
        assert numbers[name] == number, (arch, name)


def run_filter(program: bytes, arch: int, nr: int, arg0: int = 0) -> int:
    """Interpret the classic-BPF subset the filter uses over one struct seccomp_data."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    insns = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == seccomp.BPF_LD_W_ABS:
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif code == seccomp.BPF_RET_K:
            return k
        else:
            taken = {
                seccomp.BPF_JEQ_K: acc == k,
                seccomp.BPF_JGE_K: acc >= k,
                seccomp.BPF_JSET_K: bool(acc & k),
            }[code]
            pc += 1 + (jt if taken else jf)


@pytest.mark.parametrize("arch", sorted(seccomp.SYSCALL_NUMBERS))
def test_the_program_denies_the_list_and_allows_the_rest(arch):
    program = seccomp.compiled_filter(arch)
    audit = seccomp.AUDIT_ARCH[arch]
    numbers = seccomp.SYSCALL_NUMBERS[arch]
    eperm = seccomp.RET_ERRNO | errno.EPERM
    for number in seccomp.denied_numbers(arch):
        assert run_filter(program, audit, number) == eperm, number
    denied = set(seccomp.denied_numbers(arch)) | {numbers["clone"], numbers["clone3"]}
    for number in set(range(460)) - denied:  # read, write, openat, futex, execve...
        assert run_filter(program, audit, number) == seccomp.RET_ALLOW, number
    assert run_filter(program, audit, numbers["clone3"]) == seccomp.RET_ERRNO | errno.ENOSYS
    thread_flags = 0x3D0F00  # what glibc's pthread_create passes: no namespace flag
    assert run_filter(program, audit, numbers["clone"], thread_flags) == seccomp.RET_ALLOW
    for flag in (0x20000, 0x10000000, 0x40000000, 0x80):  # NEWNS, NEWUSER, NEWNET, NEWTIME
        assert run_filter(program, audit, numbers["clone"], flag | 17) == eperm
    other = seccomp.AUDIT_ARCH["aarch64" if arch == "x86_64" else "x86_64"]
    assert run_filter(program, other, 0) == seccomp.RET_KILL_PROCESS
    if arch == "x86_64":
        assert run_filter(program, audit, seccomp.X32_SYSCALL_BIT | 39) == eperm
