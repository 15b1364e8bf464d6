"""`agentrl dry-run` against real things: Redis at 127.0.0.1:6379, the sandbox and reward gRPC
servers in this process (conftest `services`), real data files, a local HTTP server in place of
a vLLM server's /health (a real vLLM is too heavy to start for this), and closed or silent ports
for the failures."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from agentrl.common.dry_run import Check, run_checks, run_dry_run

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/0"
ROW = {"prompt": "What is 2 + 2?", "ground_truth": "4", "task_type": "math", "tools": ["python"]}
TRAJECTORY = {
    "messages": [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "<code>print(2 + 2)</code>"},
        {"role": "tool", "content": "4"},
        {"role": "assistant", "content": "<answer>4</answer>"},
    ]
}


class HealthHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # the name http.server calls
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def health_url():
    """What the dry run asks of a vLLM server: GET /health answering 200."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), HealthHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_port():
    """A port that accepts connections (the kernel's backlog) and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def files(tmp_path):
    """Data sets, SFT trajectories and a model directory as a cluster user would provide."""
    train, evaluation = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text(json.dumps(ROW) + "\n" + json.dumps({**ROW, "ground_truth": 4}) + "\n")
    evaluation.write_text(json.dumps(ROW) + "\n")
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps(TRAJECTORY) + "\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (model / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {}}))
    return {"train": train, "eval": evaluation, "sft": sft, "model": model}


def write_recipe(
    tmp_path: Path, files: dict, sandbox: str, reward: str, urls: list[str], **sections
) -> Path:
    recipe = {
        "run": {"run_id": "dry-run-test", "output_dir": str(tmp_path / "run")},
        "model": {"path": str(files["model"])},
        "data": {"train_path": str(files["train"]), "eval_path": str(files["eval"])},
        "sft": {"train_path": str(files["sft"])},
        "redis": {"url": REDIS_URL},
        "sandbox": {"address": sandbox},
        "reward": {"address": reward},
        "inference": {"urls": urls},
        "rollout": {"tool_format": "code_tags"},
    }
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def by_check(results) -> dict[str, list]:
    found: dict[str, list] = {}
    for result in results:
        found.setdefault(result.check, []).append(result)
    return found


def cli_dry_run(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRL__")}
    return subprocess.run(
        [sys.executable, "-m", "agentrl.common.cli", "dry-run", "-r", str(recipe), *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env=env,
    )


def test_dry_run_passes_when_everything_the_recipe_uses_answers(
    tmp_path, services, files, health_url
):
    sandbox, reward = services
    recipe = write_recipe(tmp_path, files, sandbox, reward, [health_url])
    results = run_dry_run(recipe, env={})
    statuses = {r.check: r.status for r in results}
    assert statuses == {
        "config": "ok",
        "data.train_path": "ok",
        "data.eval_path": "ok",
        "sft.train_path": "ok",
        "model.path": "ok",
        "redis": "ok",
        "sandbox": "ok",
        "reward": "ok",
        "vllm": "ok",
        "search": "skip",
        "rollout": "skip",
    }, results
    found = by_check(results)
    assert found["data.train_path"][0].detail.startswith("2 prompts; task types: math")
    assert "SandboxService SERVING" in found["sandbox"][0].detail
    cli = cli_dry_run(recipe)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "every check passed" in cli.stderr and "FAIL" not in cli.stdout


def test_dry_run_fails_naming_a_closed_port_and_a_corrupt_data_file(
    tmp_path, services, files, health_url
):
    _sandbox, reward = services
    port = closed_port()
    files["train"].write_text(json.dumps(ROW) + '\n{"prompt": "cut off by a full disk\n')
    recipe = write_recipe(tmp_path, files, f"127.0.0.1:{port}", reward, [health_url])
    results = run_dry_run(recipe, env={}, timeout_s=3.0)
    failed = {r.check: r for r in results if r.status == "FAIL"}
    assert set(failed) == {"sandbox", "data.train_path"}, results
    assert failed["sandbox"].target == f"127.0.0.1:{port}"
    assert failed["sandbox"].detail.startswith("UNAVAILABLE")
    assert "sandbox.address" in failed["sandbox"].fix
    assert f"{files['train']}:2: not valid JSON" in failed["data.train_path"].detail
    assert "services/trainer/data.py" in failed["data.train_path"].fix
    cli = cli_dry_run(recipe, "--timeout-s", "3")
    assert cli.returncode == 1
    assert f"127.0.0.1:{port}" in cli.stdout and f"{files['train']}:2" in cli.stdout
    assert cli.stdout.count("fix: ") == 2
    assert "2 check(s) failed: data.train_path, sandbox" in cli.stderr


def test_each_service_is_checked_at_its_own_address(tmp_path, services, files, health_url):
    sandbox, _reward = services
    vllm_down, search_down, rollout_down = closed_port(), closed_port(), closed_port()
    files["train"].write_text(json.dumps({**ROW, "task_type": "qa", "tools": ["search"]}) + "\n")
    recipe = write_recipe(
        tmp_path,
        files,
        sandbox,
        sandbox,
        [health_url, f"http://127.0.0.1:{vllm_down}"],
        rollout={"tool_format": "hermes", "address": f"127.0.0.1:{rollout_down}"},
        search={"address": f"127.0.0.1:{search_down}"},
    )
    found = by_check(run_dry_run(recipe, env={}, timeout_s=3.0))
    # The reward address answers, but it is the sandbox's: the named health check tells them apart.
    assert found["reward"][0].status == "FAIL"
    assert "does not serve agentrl.reward.v1.RewardService" in found["reward"][0].detail
    assert [r.status for r in found["vllm"]] == ["ok", "FAIL"]
    assert "ConnectError" in found["vllm"][1].detail
    # The tasks search (so search is checked) and call no python (so the sandbox is not).
    assert found["search"][0].status == "FAIL" and found["search"][0].target.endswith(
        f":{search_down}"
    )
    assert found["sandbox"][0].status == "skip"
    assert (
        found["rollout"][0].status == "FAIL" and "agentrl serve rollout" in found["rollout"][0].fix
    )


def test_a_silent_peer_fails_within_the_timeout(tmp_path, services, files, silent_port):
    _sandbox, reward = services
    silent = f"127.0.0.1:{silent_port}"
    recipe = write_recipe(
        tmp_path, files, silent, reward, [f"http://{silent}"], redis={"url": f"redis://{silent}/0"}
    )
    started = time.monotonic()
    found = by_check(run_dry_run(recipe, env={}, timeout_s=1.0))
    assert time.monotonic() - started < 8.0  # files and services each run in parallel
    for check in ("redis", "sandbox", "vllm"):
        assert found[check][0].status == "FAIL", found[check]
    assert found["redis"][0].detail.startswith("no PONG")
    assert found["sandbox"][0].detail.startswith("DEADLINE_EXCEEDED")


def test_a_check_that_ignores_its_timeouts_is_cut_at_its_deadline():
    release = threading.Event()
    check = Check("stuck", "nowhere", lambda: str(release.wait(60)), "unstick it", timeout_s=0.5)
    started = time.monotonic()
    (result,) = run_checks([check])
    release.set()
    assert time.monotonic() - started < 3.0
    assert (result.status, result.detail, result.fix) == (
        "FAIL",
        "no answer within 0.5 s",
        "unstick it",
    )
