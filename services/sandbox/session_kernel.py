"""Runs INSIDE the sandbox: a notebook-like interpreter whose state lives across calls.

Protocol: once started, before any untrusted code runs, the kernel writes `{"ready": true}`
and a newline on the control fd given in argv[1] (the service records the session's processes
then: agentrl.sandbox.leftovers). Then the service writes frames `<length>\\n<json>` on stdin,
json {"code": str, "stdin": str}; the kernel runs the code in one persistent namespace
(variables and imports persist), prints the repr of a trailing expression like a notebook
cell, flushes stdout and stderr (the process's own pipes, so subprocess output is captured
too), then writes `{"exit_code": n}` and a newline on the control fd. An uncaught exception
prints its traceback and gives exit code 1; SystemExit gives its code; the session survives
both. The service kills the whole sandbox on a timeout or output overflow, and after each
call the processes the call left running.

What this does NOT cover: isolation (bwrap and the cgroup do that); a program can write fake
completion records to the control fd and so confuse only its own session.
"""

import ast
import json
import os
import sys
import traceback


def _read_exact(num_bytes):
    data = b""
    while len(data) < num_bytes:
        chunk = os.read(0, num_bytes - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data


def _read_frame():
    header = b""
    while not header.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            sys.exit(0)  # the service closed the session
        header += byte
    return json.loads(_read_exact(int(header)))


def _run_cell(source, namespace, cell):
    name = f"<cell {cell}>"
    tree = ast.parse(source, name, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, name, "exec"), namespace)  # noqa: S102 - the sandboxed program
    if last is not None:
        value = eval(compile(last, name, "eval"), namespace)
        if value is not None:
            print(repr(value))


def main():
    control = int(sys.argv[1])
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    sys.path[0] = "/work"
    import io

    os.write(control, b'{"ready": true}\n')
    cell = 0
    while True:
        frame = _read_frame()
        cell += 1
        sys.stdin = io.StringIO(frame.get("stdin", ""))
        exit_code = 0
        try:
            _run_cell(frame["code"], namespace, cell)
        except SystemExit as error:
            code = error.code
            exit_code = code if isinstance(code, int) else (0 if code is None else 1)
            if not isinstance(code, (int, type(None))):
                print(code, file=sys.stderr)
        except BaseException as error:  # noqa: BLE001 - report like a notebook would
            tb = error.__traceback__
            # Drop the kernel's own frames so the traceback starts in the cell.
            while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
                tb = tb.tb_next
            traceback.print_exception(type(error), error, tb)
            exit_code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(control, (json.dumps({"exit_code": exit_code}) + "\n").encode())


if __name__ == "__main__":
    main()
