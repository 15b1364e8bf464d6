"""`agentrl up` as a user sees it: each service's phase with the seconds it took, and for one
that keeps crashing, its log path and the log's last lines (real supervisor, real services)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AGENTRL = [sys.executable, "-m", "agentrl.common.cli"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # the search service crash-loops through every restart (about 45 s)
def test_up_shows_each_phase_and_the_log_of_a_service_that_keeps_crashing(tmp_path):
    recipe = tmp_path / "stack.yaml"
    recipe.write_text(
        f"run: {{run_id: up-{os.getpid()}, output_dir: {tmp_path / 'run'}}}\n"
        f"reward: {{grpc_port: {free_port()}, http_port: {free_port()}, "
        "num_verifier_workers: 1}\n"
        f"search: {{grpc_port: {free_port()}, http_port: {free_port()}, "
        f"index_dir: {tmp_path / 'no-index'}}}\n"
    )
    try:
        up = subprocess.run(
            [*AGENTRL, "up", "-r", str(recipe), "--services", "reward,search"],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "COLUMNS": "200"},
        )
    finally:
        subprocess.run([*AGENTRL, "down", "-r", str(recipe)], cwd=REPO, timeout=120, check=False)
    assert up.returncode == 1, up.stdout + up.stderr
    lines = up.stdout.splitlines()
    # Piped, one line per change of phase, in order, with the seconds since `up` began.
    assert lines[:2] == ["reward: starting (0 s)", "search: starting (0 s)"], up.stdout
    assert any(line.startswith("reward: ready (") for line in lines), up.stdout
    assert any(line.startswith("search: restarting (") for line in lines), up.stdout
    assert lines[-1].startswith("search: failed ("), up.stdout
    log = tmp_path / "run" / "logs" / "search.log"
    assert f"search keeps crashing (5 restarts); its log, {log}, ends:" in up.stderr
    # The log's last lines are in the message: the search service says what to run.
    assert "agentrl search index" in up.stderr.split("ends:", 1)[1], up.stderr
    assert "Traceback" not in up.stdout
