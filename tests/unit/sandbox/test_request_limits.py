"""Request validation: paths that could escape the work dir and limits beyond the config."""

import pytest

from agentrl.common.config import SandboxConfig
from agentrl.sandbox.interface import ExecutionRequest, RequestRejected
from agentrl.sandbox.languages import get_language
from agentrl.sandbox.limits import normalize_path, resolve_request


@pytest.mark.parametrize(
    "path,expected",
    [
        ("a.txt", "a.txt"),
        ("./d/a.txt", "d/a.txt"),
        ("/work/d/a.txt", "d/a.txt"),
        ("d//a", "d/a"),
    ],
)
def test_normalize_path_accepts_work_dir_paths(path, expected):
    assert normalize_path(path) == expected


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "a/../../x", "a\0b", "/work", "."])
def test_normalize_path_rejects_escapes(path):
    with pytest.raises(RequestRejected):
        normalize_path(path)


def test_resolve_request_fills_defaults_and_canonical_language():
    config = SandboxConfig(default_timeout_s=7, default_memory_mb=300)
    resolved = resolve_request(ExecutionRequest(code="print(1)", language="Python3"), config)
    assert (resolved.timeout_s, resolved.memory_mb, resolved.language) == (7.0, 300, "python")


@pytest.mark.parametrize(
    "fields,fragment",
    [
        ({"language": "cobol"}, "unknown language"),
        ({"timeout_s": 10_000}, "timeout_s"),
        ({"memory_mb": 1 << 20}, "memory_mb"),
        ({"files": {"main.py": b""}}, "main.py"),
        ({"files": {"../x": b""}}, "no '..'"),
        ({"stdin": b"x" * 2_000_000}, "max_request_bytes"),
    ],
)
def test_resolve_request_rejects_with_a_message_that_says_what_to_change(fields, fragment):
    config = SandboxConfig(max_request_bytes=1_000_000)
    with pytest.raises(RequestRejected, match=fragment):
        resolve_request(ExecutionRequest(code="1", **fields), config)


def test_language_aliases():
    assert get_language("py").name == get_language("python3").name == "python"
    assert get_language("sh").name == "bash"
