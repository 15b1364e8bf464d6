"""The warm runner outside any sandbox: exit statuses as `python3 main.py` gives them, the
observable part of interpreter shutdown before the control line, and `drive` answering from
that line (output complete, process left to the caller) or, without it, at EOF as before; and
each stream's output kept up to max_output_bytes, byte for byte, on both paths."""

import os
import subprocess
import sys
import time

import pytest

from agentrl.sandbox.bwrap import RUNNER_SOURCE
from agentrl.sandbox.capture import drive, spawn


def run_runner(
    code: str, stdin: bytes = b"", timeout_s: float = 10.0, max_output_bytes: int = 1 << 20
):
    """Run `code` through the runner with a control pipe; (captured, control bytes, proc)."""
    read_fd, write_fd = os.pipe()
    proc = spawn(
        [sys.executable, "-c", RUNNER_SOURCE, str(write_fd)],
        {"PATH": "/usr/bin:/bin"},
        pass_fds=(write_fd,),
    )
    os.close(write_fd)
    source = code.encode()
    try:
        captured = drive(
            proc,
            stdin=b"%d\n" % len(source) + source + stdin,
            timeout_s=timeout_s,
            max_output_bytes=max_output_bytes,
            control_fd=read_fd,
        )
        proc.wait(timeout=10)
        os.set_blocking(read_fd, True)
        rest = b""
        while chunk := os.read(read_fd, 1024):
            rest += chunk
    finally:
        os.close(read_fd)
    return captured, rest, proc


@pytest.mark.parametrize(
    ("code", "status", "stderr_part"),
    [
        ("print(input()[::-1])", 0, ""),
        ("import sys; sys.exit(3)", 3, ""),
        ("import sys; sys.exit(256)", 0, ""),
        ("import sys; sys.exit(-1)", 255, ""),
        ("import sys; sys.exit('bye')", 1, "bye"),
        ("1/0", 1, "ZeroDivisionError"),
        ("raise KeyboardInterrupt", 130, "KeyboardInterrupt"),
    ],
)
def test_status_matches_the_process_and_python(code, status, stderr_part):
    captured, _, proc = run_runner(code, stdin=b"abc\n")
    assert not captured.exited and captured.returncode == status == proc.returncode
    assert stderr_part in captured.stderr.decode()
    if status == 0 and "input" in code:
        assert captured.stdout == b"cba\n"
    bare = subprocess.run(
        [sys.executable, "-c", code], input=b"abc\n", capture_output=True, check=False
    )
    # bwrap reports death by signal N as 128 + N, as a shell does.
    assert (bare.returncode if bare.returncode >= 0 else 128 - bare.returncode) == status


def test_shutdown_output_comes_before_the_answer(tmp_path):
    target = tmp_path / "left_open.txt"
    code = (
        f"import atexit, threading, time\nf = open({str(target)!r}, 'w')\nf.write('data')\n"
        "atexit.register(lambda: print('atexit'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread'))).start()\n"
        "print('main', end='\\n', flush=False)"
    )
    captured, _, _ = run_runner(code)
    assert captured.stdout == b"main\nthread\natexit\n" and captured.returncode == 0
    assert target.read_text() == "data"  # the unclosed file was flushed before the answer


def test_a_forked_child_never_answers_for_the_program():
    code = (
        "import os, time\nif os.fork() == 0:\n    print('child', flush=True)\nelse:\n"
        "    os.wait()\n    time.sleep(0.1)\n    print('parent')\n    raise SystemExit(7)"
    )
    captured, rest, _ = run_runner(code)
    assert captured.returncode == 7 and rest == b""
    assert sorted(captured.stdout.split()) == [b"child", b"parent"]


def test_os_exit_and_timeouts_fall_back_to_eof():
    captured, _, _ = run_runner("import os\nprint('x', flush=True)\nos._exit(4)")
    assert captured.exited and captured.returncode == 4 and captured.stdout == b"x\n"
    start = time.monotonic()
    captured, _, _ = run_runner("while True: pass", timeout_s=0.5)
    assert captured.timed_out and captured.exited and time.monotonic() - start < 3


def test_a_malformed_control_line_is_ignored():
    read_fd, write_fd = os.pipe()
    program = f"import os; os.write({write_fd}, b'oops\\n'); print('still read')"
    proc = spawn([sys.executable, "-c", program], {"PATH": "/usr/bin:/bin"}, pass_fds=(write_fd,))
    os.close(write_fd)
    try:
        captured = drive(proc, stdin=b"", timeout_s=10, max_output_bytes=1024, control_fd=read_fd)
    finally:
        os.close(read_fd)
    assert captured.exited and captured.returncode == 0 and captured.stdout == b"still read\n"


# `drive` keeps each stream's output up to max_output_bytes, byte for byte: everything at the
# cap, the first max_output_bytes above it (and the run stopped), whether the output arrives
# until EOF or is drained after the runner's control line.

# Not a multiple of the 64 KiB read size, so the cap falls inside a chunk.
CAP_BYTES = 3 * 64 * 1024 + 1234
# Long enough never to end a run these tests expect to end on its output.
TIMEOUT_S = 60.0


def pattern(num_bytes: int) -> bytes:
    """Distinct bytes at nearby offsets, so a lost, doubled or reordered chunk shows."""
    return bytes(i * 7 % 251 for i in range(num_bytes))


def writer(stream: str, num_bytes: int, then: str = "") -> str:
    """A program writing pattern(num_bytes) to `stream` in uneven pieces, then `then`."""
    return (
        "import sys, time\n"
        f"data = bytes(i * 7 % 251 for i in range({num_bytes}))\n"
        "for start in range(0, len(data), 50_000):\n"
        f"    sys.{stream}.buffer.write(data[start:start + 50_000])\n"
        f"    sys.{stream}.buffer.flush()\n"
        f"{then}\n"
    )


def run_plain(code: str):
    proc = spawn([sys.executable, "-c", code], {"PATH": "/usr/bin:/bin"})
    return drive(proc, stdin=b"", timeout_s=TIMEOUT_S, max_output_bytes=CAP_BYTES)


def test_output_exactly_at_the_cap_comes_back_whole():
    for stream in ("stdout", "stderr"):
        captured = run_plain(writer(stream, CAP_BYTES))
        assert getattr(captured, stream) == pattern(CAP_BYTES)
        assert captured.returncode == 0 and not captured.output_exceeded
        assert not (captured.stdout_truncated or captured.stderr_truncated)


def test_one_byte_over_the_cap_is_cut_and_the_run_stopped():
    # The program would sleep past the timeout: only the cap can end it early.
    for stream in ("stdout", "stderr"):
        captured = run_plain(writer(stream, CAP_BYTES + 1, then="time.sleep(3600)"))
        assert getattr(captured, stream) == pattern(CAP_BYTES)
        assert getattr(captured, f"{stream}_truncated")
        assert captured.output_exceeded and not captured.timed_out
        assert captured.returncode == -9  # SIGKILL


def test_each_stream_has_its_own_cap():
    code = writer("stdout", CAP_BYTES) + writer("stderr", CAP_BYTES)
    captured = run_plain(code)
    assert captured.stdout == captured.stderr == pattern(CAP_BYTES)
    assert not captured.output_exceeded


def test_the_control_line_path_keeps_the_same_bytes():
    at_cap, _, _ = run_runner(writer("stdout", CAP_BYTES), max_output_bytes=CAP_BYTES)
    assert not at_cap.exited and at_cap.returncode == 0
    assert at_cap.stdout == pattern(CAP_BYTES) and not at_cap.output_exceeded
    over, _, _ = run_runner(writer("stdout", 4 * CAP_BYTES), max_output_bytes=CAP_BYTES)
    assert over.stdout == pattern(CAP_BYTES)
    assert over.stdout_truncated and over.output_exceeded and not over.timed_out
