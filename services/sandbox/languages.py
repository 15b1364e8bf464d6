"""Languages the sandbox runs: how a program's source is stored and started.

Python first; the table allows more (bash is here because tests and shell snippets need it).
A language needs its interpreter inside the sandbox: on the bwrap backend that is the host's
`/usr` (plus `SandboxConfig.ro_binds`), on the docker backend the image.

What this module does NOT cover: compiled languages (no compile step yet, so SandboxFusion's
`compile_timeout` is accepted and ignored).
"""

from __future__ import annotations

from dataclasses import dataclass

from agentrl.sandbox.interface import RequestRejected


@dataclass(frozen=True)
class Language:
    name: str
    source_name: str
    """File the code is written to, inside the work dir (also what tracebacks show)."""
    interpreter: tuple[str, ...]
    """argv before the source path; `{python}` is replaced by the configured interpreter."""

    def argv(self, python: str, source_path: str) -> list[str]:
        return [python if part == "{python}" else part for part in self.interpreter] + [source_path]


LANGUAGES: dict[str, Language] = {
    "python": Language("python", "main.py", ("{python}",)),
    "bash": Language("bash", "main.sh", ("/bin/bash",)),
}

# Names other tools use for the same languages (SandboxFusion says `python`, some agents `py`).
ALIASES: dict[str, str] = {"python3": "python", "py": "python", "sh": "bash"}


def get_language(name: str) -> Language:
    """The language called `name` (case-insensitive, aliases allowed) or RequestRejected."""
    key = (name or "python").strip().lower()
    key = ALIASES.get(key, key)
    if key not in LANGUAGES:
        known = ", ".join(sorted([*LANGUAGES, *ALIASES]))
        raise RequestRejected(f"unknown language {name[:40]!r}; use one of: {known}")
    return LANGUAGES[key]
