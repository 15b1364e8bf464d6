"""Runs INSIDE the sandbox: a pre-started interpreter that waits for one program, then runs it.

The bwrap backend starts `python3 -c <this file> <control fd>` in a fresh sandbox before any
request needs it (a warm slot), so a request pays neither namespace setup nor interpreter
start-up; it passes this file compiled ahead by the same interpreter, with a one-line boot that
loads it (agentrl.sandbox.bwrap_slots.runner_args), so no start compiles it again. Protocol on stdin: one line with the code's length in bytes, the code, then the
program's own stdin until EOF. The program runs once as `__main__` from /work/main.py (also
written to disk), with the tracebacks, exit codes and sys.argv that `python3 /work/main.py`
would give. A warm process is never reused for a second program.

Ending: the runner performs the part of interpreter shutdown a program can observe, in
CPython's order (non-daemon threads joined, atexit handlers, stdout and stderr flushed with
exit status 120 if that fails, the globals of `__main__` and of the program's own modules
under /work released so that unclosed files are flushed and closed; while daemon threads
still run the globals are kept and only their open files flushed), then writes the exit status as one line
`<status>\\n` on the control fd (when one was given; the docker backend gives none) and leaves
with os._exit. The rest of the finalization only frees memory that the kernel frees anyway and
costs several milliseconds of CPU per run (more after many imports), and the service answers
from the control line without waiting for the sandbox to come down; it then kills the whole
sandbox in the background before the slot is used again.

What this does NOT cover: isolation (bwrap and the cgroup do that) and hiding itself: a
program can tell it was started through this runner (e.g. from /proc/self/cmdline) and can
write a status line of its own; that only ends its own run early, as os._exit could. Objects
kept alive elsewhere (library modules, reference cycles) are not finalized; a `__del__` there
that prints or writes a file has no effect (CPython does not promise to run those either); a
failed flush of stdout at exit gives status 120 without CPython's "Exception ignored" line.
"""

import os
import sys

# Exit status CPython gives when flushing stdout/stderr at exit fails.
FLUSH_FAILED_STATUS = 120
# Exit status for an uncaught KeyboardInterrupt (what a shell reports for SIGINT).
INTERRUPTED_STATUS = 130


def _read_exact(num_bytes):
    chunks = []
    while num_bytes:
        chunk = os.read(0, min(num_bytes, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        num_bytes -= len(chunk)
    return b"".join(chunks)


def _system_exit_status(error):
    """The status `raise SystemExit(code)` gives at top level (CPython's handle_system_exit)."""
    code = error.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF if -(1 << 63) <= code < (1 << 63) else 0xFF
    try:
        sys.stderr.write(f"{code}\n")
    except Exception:  # noqa: BLE001, S110 - a broken stderr changes nothing here
        pass
    return 1


def _release_globals(module):
    """Drop a module's globals like CPython's module teardown (underscored names first)."""
    names = [n for n in list(vars(module)) if n != "__builtins__"]
    for first_pass in (True, False):
        for name in names:
            if name.startswith("_") != first_pass or name not in vars(module):
                continue
            try:
                vars(module)[name] = None
            except Exception:  # noqa: BLE001, S110 - a failing __del__ is ignored, as at exit
                pass


def _flush_files(module):
    """Flush the open files among a module's globals (without releasing anything)."""
    import io

    for value in list(vars(module).values()):
        if isinstance(value, io.IOBase):
            try:
                value.flush()
            except Exception:  # noqa: BLE001, S110 - as a failing flush at exit
                pass


def _flush_std_files(status):
    """CPython's flush_std_files: a failing flush of stdout or stderr makes the status 120."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            closed = bool(stream.closed)
        except Exception:  # noqa: BLE001
            closed = False
        if not closed:
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                status = FLUSH_FAILED_STATUS
    return status


def _shutdown(status):
    """What interpreter shutdown does that a program can see; returns the final status."""
    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            threading._shutdown()  # join non-daemon threads, as Py_Finalize does
        except BaseException:  # noqa: BLE001, S110 - e.g. KeyboardInterrupt while joining
            pass
    import atexit

    atexit._run_exitfuncs()  # errors are printed and ignored, as at exit
    status = _flush_std_files(status)
    own = [
        m
        for m in list(sys.modules.values())
        if str(getattr(m, "__file__", "") or "").startswith("/work/")
    ]
    modules = [m for m in [sys.modules.get("__main__"), *own] if m is not None]
    # Daemon threads still running would see the released globals as None (CPython stops
    # them first); with any alive, only flush the files the program left open.
    daemons = threading is not None and threading.active_count() > 1
    for module in modules:
        (_flush_files if daemons else _release_globals)(module)
    return _flush_std_files(status)


def _run():
    control = int(sys.argv[1]) if len(sys.argv) > 1 else -1
    if control >= 0:
        os.set_inheritable(control, False)  # the program's subprocesses never get it
    header = b""
    while not header.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            os._exit(0)  # the service closed the slot: nothing to run
        header += byte
    source = _read_exact(int(header))
    runner_pid = os.getpid()
    path = "/work/main.py"
    sys.argv = [path]
    sys.path[0] = "/work"
    module = type(sys)("__main__")
    module.__file__ = path
    module.__builtins__ = __builtins__
    sys.modules["__main__"] = module
    status = 0
    try:
        code = compile(source, path, "exec")
        exec(code, module.__dict__)  # noqa: S102 - this is the sandboxed program
    except SystemExit as error:
        status = _system_exit_status(error)
    except BaseException as error:  # noqa: BLE001 - report like the interpreter would
        import traceback

        tb = error.__traceback__
        # Skip this runner's own frame so the traceback starts at the program, as usual.
        traceback.print_exception(type(error), error, tb.tb_next if tb else None)
        status = INTERRUPTED_STATUS if isinstance(error, KeyboardInterrupt) else 1
    status = _shutdown(status)
    # A child the program forked (os.fork) that returns here ends too, but only the runner
    # itself reports: the run's status is the program's, as with `python3 main.py`.
    if control >= 0 and os.getpid() == runner_pid:
        try:
            os.write(control, b"%d\n" % status)
        except OSError:
            pass
    os._exit(status)


if __name__ == "__main__":
    _run()
