"""`drive` keeps each stream's output up to max_output_bytes, byte for byte: everything at the
cap, the first max_output_bytes above it (and the run stopped), whether the output arrives
until EOF or is drained after the runner's control line. Real processes, no sandbox."""

import os
import sys

from agentrl.sandbox.bwrap import RUNNER_SOURCE
from agentrl.sandbox.capture import drive, spawn

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


def run_through_runner(code: str):
    """`code` in the warm runner, answered from its control line (the bwrap backend's path)."""
    read_fd, write_fd = os.pipe()
    proc = spawn(
        [sys.executable, "-c", RUNNER_SOURCE, str(write_fd)],
        {"PATH": "/usr/bin:/bin"},
        pass_fds=(write_fd,),
    )
    os.close(write_fd)
    source = code.encode()
    try:
        return drive(
            proc,
            stdin=b"%d\n" % len(source) + source,
            timeout_s=TIMEOUT_S,
            max_output_bytes=CAP_BYTES,
            control_fd=read_fd,
        )
    finally:
        proc.kill()
        proc.wait()
        os.close(read_fd)


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
    at_cap = run_through_runner(writer("stdout", CAP_BYTES))
    assert not at_cap.exited and at_cap.returncode == 0
    assert at_cap.stdout == pattern(CAP_BYTES) and not at_cap.output_exceeded
    over = run_through_runner(writer("stdout", 4 * CAP_BYTES))
    assert over.stdout == pattern(CAP_BYTES)
    assert over.stdout_truncated and over.output_exceeded and not over.timed_out
