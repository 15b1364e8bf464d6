"""The `agentrl` CLI as a user runs it: real processes, real Redis."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AGENTRL = [sys.executable, "-m", "agentrl.common.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*AGENTRL, *args], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_every_listed_command_has_working_help():
    top = run("--help")
    assert top.returncode == 0
    for group in ("config", "streams"):
        assert group in top.stdout
        sub = run(group, "--help")
        assert sub.returncode == 0, sub.stderr


def test_validate_prints_the_resolved_config():
    result = run("config", "validate", "recipes/local.yaml",
                 env={"AGENTRL__SANDBOX__MAX_CONCURRENCY": "7"})
    assert result.returncode == 0, result.stderr
    assert "max_concurrency: 7" in result.stdout


def test_validate_lists_every_error_and_fails(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("sandbox:\n  backnd: docker\ntrainer:\n  batch_size: x\n")
    result = run("config", "validate", str(recipe))
    assert result.returncode == 1
    assert "sandbox.backnd" in result.stderr and "did you mean `backend`" in result.stderr
    assert "trainer.batch_size" in result.stderr


def test_streams_check_round_trips_through_real_redis():
    result = run("streams", "check", "--recipe", "recipes/local.yaml")
    assert result.returncode == 0, result.stderr
    assert "pending after completion: 0" in result.stdout


def test_streams_status_on_dead_redis_says_what_to_check():
    result = run("streams", "status", env={"AGENTRL__REDIS__URL": "redis://127.0.0.1:1/0",
                                           "AGENTRL__REDIS__RECONNECT_DEADLINE_S": "0.5"})
    assert result.returncode == 1
    assert "unreachable" in result.stderr and "127.0.0.1:1" in result.stderr
