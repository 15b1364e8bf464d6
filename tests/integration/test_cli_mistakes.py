"""A newcomer's first mistakes, each through the real `agentrl` CLI as a subprocess: the stack
not up, a wrong port, a misspelt key, a missing model, Redis down. Each must end in one
paragraph that names the setting and the fix, with no traceback (unless `--debug`)."""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
AGENTRL = [sys.executable, "-m", "agentrl.common.cli"]
PROMPT = {
    "id": "p0",
    "prompt": "What is 2 * 3?",
    "ground_truth": "6",
    "task_type": "math",
    "tools": ["python"],
}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*AGENTRL, *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "COLUMNS": "80", **(env or {})},
    )


def one_paragraph(result: subprocess.CompletedProcess) -> str:
    """stderr, asserted to be one paragraph without a traceback, whitespace collapsed."""
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return " ".join(result.stderr.split())


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """What the checks look for in a checkpoint (config.json, a tokenizer): every test here
    stops at a check before anything loads it, so no weights are made (that takes seconds)."""
    path = tmp_path_factory.mktemp("model")
    (path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (path / "tokenizer.json").write_text(json.dumps({"version": "1.0"}))
    return path


@pytest.fixture
def recipe(tmp_path, model):
    """Write a recipe: a real model and prompts, every service on a port nothing listens on
    (the stack not up), `sections` merged over it."""

    def write(**sections) -> Path:
        data = tmp_path / "train.jsonl"
        data.write_text(json.dumps(PROMPT) + "\n")
        config = {
            "run": {"output_dir": str(tmp_path / "run")},
            "model": {"path": str(model)},
            "data": {"train_path": str(data)},
            "inference": {"urls": [f"http://127.0.0.1:{free_port()}"]},
            "trainer": {"device": "cpu", "total_steps": 1},
            **{name: {"grpc_port": free_port()} for name in ("sandbox", "reward", "search")},
        }
        for name, section in sections.items():
            config[name] = {**config.get(name, {}), **section}
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


def test_stack_not_up_names_each_service_its_setting_and_agentrl_up(recipe):
    path = recipe()
    config = yaml.safe_load(path.read_text())
    out = run("train", "-r", str(path))
    assert out.returncode == 2, out.stdout + out.stderr
    message = one_paragraph(out)
    for name in ("sandbox", "reward"):
        port = config[name]["grpc_port"]
        assert f"{name} at 127.0.0.1:{port} does not answer" in message
        assert f"{name}.address" in message
    assert f"vllm at {config['inference']['urls'][0]} does not answer" in message
    assert "inference.urls" in message and "nothing listens there" in message
    assert f"agentrl up -r {path}" in message
    assert "search at" not in message  # the prompts call python only: search is not needed


class NotFoundHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # the name http.server calls
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_wrong_port_says_what_listens_there_and_which_setting_to_change(recipe):
    # Another program (an HTTP server, e.g. a service's HTTP port) on the ports the recipe names.
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFoundHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        path = recipe(reward={"grpc_port": port}, inference={"urls": [f"http://127.0.0.1:{port}"]})
        out = run("eval", "-r", str(path), "--data", str(path.parent / "train.jsonl"))
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 2, out.stdout + out.stderr
    message = one_paragraph(out)
    assert (
        f"reward at 127.0.0.1:{port} does not answer" in message
        and "a process listens there but is not the reward service's gRPC server" in message
        and "point reward.address (or reward.grpc_port" in message
    )
    assert "not a vLLM server: a wrong port?" in message
    assert "point inference.urls" in message and "agentrl status -r" in message


def test_a_misspelt_key_gets_the_closest_one(recipe):
    path = recipe(trainer={"total_step": 5})
    out = run("train", "-r", str(path))
    assert out.returncode == 1, out.stdout + out.stderr
    message = one_paragraph(out)
    assert "trainer.total_step: unknown key; did you mean `total_steps`?" in message
    assert "agentrl config show trainer" in message
    # --debug shows the traceback behind the same message.
    debug = run("--debug", "train", "-r", str(path))
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "did you mean `total_steps`?" in debug.stderr


def test_a_missing_model_path_says_how_to_make_one(recipe, tmp_path):
    missing = tmp_path / "no-such-model"
    path = recipe(model={"path": str(missing)})
    for command in (["train"], ["sft"], ["up", "--services", "vllm"]):
        out = run(*command, "-r", str(path))
        assert out.returncode == 2, (command, out.stdout + out.stderr)
        message = one_paragraph(out)
        assert f"model.path ({missing}) is not usable: {missing} does not exist" in message
        assert "agentrl model init --preset tiny" in message
    assert not (tmp_path / "run" / "stack.json").exists()  # `up` started nothing


def test_redis_down_names_the_url_the_setting_and_how_to_start_it(recipe):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = {"AGENTRL__REDIS__URL": dead}
    path = recipe()
    for command in (["train", "-r", str(path)], ["streams", "check", "-r", str(path)]):
        out = run(*command, env=env)
        assert out.returncode == 2, (command, out.stdout + out.stderr)
        message = one_paragraph(out)
        assert f"redis at {dead} does not answer" in message
        assert "redis.url" in message and "redis-server" in message


def test_data_generators_check_the_service_they_call_first(recipe, tmp_path):
    path = recipe()
    config = yaml.safe_load(path.read_text())
    calculator = run("data", "make-calculator", "-r", str(path), "--out", str(tmp_path / "c"))
    assert calculator.returncode == 2, calculator.stdout + calculator.stderr
    message = one_paragraph(calculator)
    assert f"sandbox at 127.0.0.1:{config['sandbox']['grpc_port']} does not answer" in message
    assert "reward at" not in message and not (tmp_path / "c").exists()
    search = run(
        "data",
        "make-search-task",
        "-r",
        str(path),
        "--world",
        str(tmp_path),
        "--out",
        str(tmp_path / "s"),
    )
    assert search.returncode == 2, search.stdout + search.stderr
    assert f"search at 127.0.0.1:{config['search']['grpc_port']}" in one_paragraph(search)


def test_a_misspelt_section_of_config_show_gets_the_closest_one():
    out = run("config", "show", "sandbx")
    assert out.returncode == 1
    assert (
        "unknown section 'sandbx'" in one_paragraph(out) and "Did you mean `sandbox`?" in out.stderr
    )


def test_an_error_no_command_explains_is_one_paragraph_and_debug_shows_its_traceback(tmp_path):
    # A directory where the corpus file should be: nothing in `search index` explains that yet.
    out = run("search", "index", str(tmp_path), "--out", str(tmp_path / "index"))
    assert out.returncode == 1
    message = one_paragraph(out)
    assert message.startswith("agentrl: unexpected IsADirectoryError") and "--debug" in message
    debug = run("--debug", "search", "index", str(tmp_path), "--out", str(tmp_path / "index"))
    assert debug.returncode == 1 and "Traceback" in debug.stderr
