"""Runs INSIDE the sandbox: a pre-started interpreter that waits for one program, then runs it.

The bwrap backend starts `python3 -c <this file>` in a fresh sandbox before any request needs
it (a warm slot), so a request pays neither namespace setup nor interpreter start-up. Protocol
on stdin: one line with the code's length in bytes, the code, then the program's own stdin
until EOF. The program runs once as `__main__` from /work/main.py (also written to disk), with
the tracebacks, exit codes and sys.argv that `python3 /work/main.py` would give; then the
process exits. A warm process is never reused for a second program.

What this does NOT cover: isolation (bwrap and the cgroup do that) and hiding itself: a
program can tell it was started through this runner (e.g. from /proc/self/cmdline).
"""

import os
import sys


def _read_exact(num_bytes):
    chunks = []
    while num_bytes:
        chunk = os.read(0, min(num_bytes, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        num_bytes -= len(chunk)
    return b"".join(chunks)


def _run():
    header = b""
    while not header.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            sys.exit(0)  # the service closed the slot: nothing to run
        header += byte
    source = _read_exact(int(header))
    path = "/work/main.py"
    sys.argv = [path]
    sys.path[0] = "/work"
    module = type(sys)("__main__")
    module.__file__ = path
    module.__builtins__ = __builtins__
    sys.modules["__main__"] = module
    try:
        code = compile(source, path, "exec")
        exec(code, module.__dict__)  # noqa: S102 - this is the sandboxed program
    except SystemExit:
        raise
    except BaseException as error:  # noqa: BLE001 - report like the interpreter would
        import traceback

        tb = error.__traceback__
        # Skip this runner's own frame so the traceback starts at the program, as usual.
        traceback.print_exception(type(error), error, tb.tb_next if tb else None)
        sys.stderr.flush()
        sys.exit(130 if isinstance(error, KeyboardInterrupt) else 1)


if __name__ == "__main__":
    _run()
