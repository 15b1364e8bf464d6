"""The `agentrl` CLI as a user runs it: real processes, real Redis."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AGENTRL = [sys.executable, "-m", "agentrl.common.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*AGENTRL, *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_every_listed_command_has_working_help():
    top = run("--help")
    assert top.returncode == 0
    for group in ("config", "streams", "search", "data", "model", "sft", "eval", "up", "serve"):
        assert group in top.stdout
        sub = run(group, "--help")
        assert sub.returncode == 0, sub.stderr


def test_version_names_agentrl_and_the_engines_it_runs_on():
    from importlib.metadata import version

    out = run("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"agentrl {version('agentrl')} (torch {version('torch')}")
    assert "vllm" in out.stdout and "transformers" in out.stdout


def test_validate_prints_the_resolved_config():
    result = run(
        "config", "validate", "recipes/local.yaml", env={"AGENTRL__SANDBOX__MAX_CONCURRENCY": "7"}
    )
    assert result.returncode == 0, result.stderr
    assert "max_concurrency: 7" in result.stdout


def test_validate_lists_every_error_and_fails(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("sandbox:\n  backnd: docker\ntrainer:\n  batch_size: x\n")
    result = run("config", "validate", str(recipe))
    assert result.returncode == 1
    assert "sandbox.backnd" in result.stderr and "did you mean `backend`" in result.stderr
    assert "trainer.batch_size" in result.stderr


def test_validate_says_where_an_old_flat_key_moved(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("rollout:\n  vllm_max_model_len: 2048\n")
    result = run("config", "validate", str(recipe), env={"AGENTRL__ROLLOUT__ARPO_TAU": "1.0"})
    assert result.returncode == 1
    assert "rollout.vllm_max_model_len" in result.stderr
    assert "moved to inference.server.max_model_len" in result.stderr
    assert "moved to rollout.arpo.tau (env AGENTRL__ROLLOUT__ARPO__TAU)" in result.stderr


def test_config_show_lists_every_section_and_sub_section():
    everything = run("config", "show")  # once crashed on the optional sections (model, data)
    assert everything.returncode == 0, everything.stderr
    for key in (
        "model.path",
        "data.train_path",
        "inference.server.max_model_len",
        "rollout.arpo.beam_size",
        "reward.overlong.buffer_tokens",
        "sft.max_steps",
    ):
        assert key in everything.stdout
    model = run("config", "show", "model")
    assert model.returncode == 0, model.stderr
    assert "model.path" in model.stdout and "Hugging Face checkpoint" in model.stdout
    server = run("config", "show", "inference.server")
    assert server.returncode == 0, server.stderr
    assert (
        "inference.server.kv_cache_gib" in server.stdout and "inference.urls" not in server.stdout
    )
    unknown = run("config", "show", "rollout.arpoo")
    assert unknown.returncode == 1 and "rollout.arpo" in unknown.stderr


def test_streams_check_round_trips_through_real_redis():
    result = run("streams", "check", "--recipe", "recipes/local.yaml")
    assert result.returncode == 0, result.stderr
    assert "pending after completion: 0" in result.stdout


def test_streams_status_on_dead_redis_says_what_to_check():
    result = run(
        "streams",
        "status",
        env={
            "AGENTRL__REDIS__URL": "redis://127.0.0.1:1/0",
            "AGENTRL__REDIS__RECONNECT_DEADLINE_S": "0.5",
        },
    )
    assert result.returncode == 2, result.stderr
    message = " ".join(result.stderr.split())
    assert "redis at redis://127.0.0.1:1/0 does not answer" in message and "redis.url" in message
    assert "Traceback" not in result.stderr


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_runs_a_service_until_sigterm():
    import signal
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    grpc_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "AGENTRL__REWARD__GRPC_PORT": str(grpc_port),
        "AGENTRL__REWARD__HTTP_PORT": str(http_port),
        "AGENTRL__REWARD__NUM_VERIFIER_WORKERS": "1",
    }
    process = subprocess.Popen(
        [*AGENTRL, "serve", "reward"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
                break
            except grpc.RpcError:
                time.sleep(0.3)
        assert status == health_pb2.HealthCheckResponse.SERVING, (
            process.stdout.read() if process.poll() is not None else "not serving"
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_rejects_an_unknown_service():
    result = run("serve", "nonsense")
    assert result.returncode == 2
    assert "sandbox" in result.stderr and "reward" in result.stderr


def test_eval_with_the_stack_down_names_every_missing_service_in_one_paragraph(tmp_path):
    data = tmp_path / "eval.jsonl"
    data.write_text(
        '{"id": "p0", "prompt": "What is 2 * 3?", "ground_truth": "6", '
        '"task_type": "math", "tools": ["python"]}\n'
    )
    vllm_url = f"http://127.0.0.1:{free_port()}"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"inference:\n  urls: [{vllm_url}]\nsandbox:\n  grpc_port: {free_port()}\n"
        f"reward:\n  grpc_port: {free_port()}\nsearch:\n  grpc_port: {free_port()}\n"
    )
    out = run(
        "eval",
        "-r",
        str(recipe),
        "--data",
        str(data),
        "-k",
        "1",
        "--out",
        str(tmp_path / "report.json"),
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    message = " ".join(out.stderr.split())
    for service in ("sandbox at 127.0.0.1:", "reward at 127.0.0.1:", f"vllm at {vllm_url}"):
        assert service in message
    assert "search at" not in message  # no task searches: not needed, not checked
    assert f"agentrl up -r {recipe}" in message and "inference.urls" in message
