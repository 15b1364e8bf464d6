"""Languages the sandbox runs: how a program's source is stored, compiled and started.

python and bash run their source directly; cpp is compiled first (g++), in the same sandbox
and slot as the run but as a step of its own with its own wall-clock limit (`compile_timeout_s`
of the request), and the binary runs only when the compile step exited 0. A language needs its
tools inside the sandbox: on the bwrap backend that is the host's `/usr` (plus
`SandboxConfig.ro_binds`; scripts/setup.sh installs g++ and the scientific Python stack), on the
docker backend the image (services/sandbox/image/Dockerfile installs the same).

What this module does NOT cover: languages beyond these three (SandboxFusion's other values
are answered 422 naming these); a compile step's output files other than the binary.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentrl.sandbox.interface import RequestRejected

# Where a compiled language's binary goes (gcc's default name). In the work dir, not /tmp: the
# docker backend recycles a container whose run left anything in /tmp.
BINARY_PATH = "/work/a.out"


@dataclass(frozen=True)
class Language:
    name: str
    source_name: str
    """File the code is written to, inside the work dir (also what tracebacks show)."""
    interpreter: tuple[str, ...]
    """argv before the source path; `{python}` is replaced by the configured interpreter.
    Empty for a compiled language: the run is the binary itself."""
    compiler: tuple[str, ...] = ()
    """argv of the compile step before the source path (empty: no compile step); it writes
    BINARY_PATH."""

    def argv(self, python: str, source_path: str) -> list[str]:
        """The run step's argv."""
        if self.compiler:
            return [BINARY_PATH]
        return [python if part == "{python}" else part for part in self.interpreter] + [source_path]

    def compile_argv(self, source_path: str) -> list[str]:
        return [*self.compiler, source_path]


LANGUAGES: dict[str, Language] = {
    "python": Language("python", "main.py", ("{python}",)),
    "bash": Language("bash", "main.sh", ("/bin/bash",)),
    # gnu++17 and -O2: what competitive-programming judges (Codeforces, LiveCodeBench's
    # harness) compile with; -pipe keeps the intermediate files off the small /tmp.
    "cpp": Language(
        "cpp", "main.cpp", (), ("/usr/bin/g++", "-std=gnu++17", "-O2", "-pipe", "-o", BINARY_PATH)
    ),
}

# Names other tools use for the same languages (SandboxFusion says `python`, some agents `py`).
ALIASES: dict[str, str] = {"python3": "python", "py": "python", "sh": "bash", "c++": "cpp"}


def get_language(name: str) -> Language:
    """The language called `name` (case-insensitive, aliases allowed) or RequestRejected."""
    key = (name or "python").strip().lower()
    key = ALIASES.get(key, key)
    if key not in LANGUAGES:
        known = ", ".join(sorted([*LANGUAGES, *ALIASES]))
        raise RequestRejected(f"unknown language {name[:40]!r}; use one of: {known}")
    return LANGUAGES[key]
