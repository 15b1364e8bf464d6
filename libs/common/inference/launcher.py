"""Start and stop stock `vllm serve` processes for local runs and tests (one CPU or GPU server).

    with VLLMServer.launch(config.inference.server, model_dir, log_path) as server:
        pool = InferencePool([server.url], ...)

The server runs vLLM's own OpenAI API server (`python -m vllm.entrypoints.openai.api_server`,
the code behind `vllm serve`) in a new process group, with
- `--enable-scale-out`: registers `POST /inference/v1/generate`, vLLM's token-in/token-out route
  (token ids in; token ids, log-probs with top-k and per-token weight versions out);
- `VLLM_SERVER_DEV_MODE=1`: registers the RL routes (`/pause`, `/resume`, `/update_weights`,
  `/update_weight_version`, `/weight_info`, ...);
- `--generation-config vllm`: the model's generation_config.json must not change the sampling
  parameters a task asks for;
- `--logprobs-mode raw_logprobs`: log-probs of the model's own distribution (before
  temperature or token constraints), the quantity the trainer recomputes;
- `--weight-transfer-config '{"backend": "agentrl_gloo"}'` (`inference.weight_transfer_backend`):
  the engine behind the four-phase weight-transfer routes; `agentrl_gloo` is registered by
  AgentRL's `vllm.general_plugins` entry point (vllm_plugin.py), so the server must run in an
  environment where agentrl is installed;
- `--enforce-eager` (`inference.server.enforce_eager`, needed on CPU, where graphs are not
  captured) and `VLLM_CPU_KVCACHE_SPACE` (GiB; CPU servers size the KV cache by hand);
- `--tensor-parallel-size`, `--gpu-memory-utilization` and `inference.server.extra_args` for
  GPU servers (the chart's vLLM values set them).
The module form is used instead of the `vllm` console script because vllm-cpu's distribution
is named `vllm-cpu`, and the script's version lookup of `vllm` fails on it.

What this does NOT cover: servers on a cluster (give their URLs to the pool instead), and GPU
placement (CUDA_VISIBLE_DEVICES is inherited).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import httpx

from agentrl.common.config import InferenceServerConfig

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
SERVED_MODEL_NAME = "policy"
# Top-k log-probs a request may ask for (ARPO uses 10; vLLM's default cap is 20).
MAX_LOGPROBS = 20
# /health is polled this often while the engine starts (start takes 20-90 s on 2 CPU cores).
HEALTH_POLL_INTERVAL_S = 0.5
# SIGTERM lets vLLM shut its engine process down; after this long the group is killed.
STOP_GRACE_S = 20.0
# Lines of the server log quoted in a start failure.
LOG_TAIL_LINES = 40


class VLLMStartError(RuntimeError):
    """The server exited or did not become healthy in time; the message quotes its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def build_command(
    config: InferenceServerConfig,
    model_dir: Path,
    port: int,
    host: str = "127.0.0.1",
    seed: int = 0,
    weight_transfer_backend: str = "agentrl_gloo",
) -> list[str]:
    """The server's argv: `vllm serve` flags (see the module docstring for why each is set)."""
    command = [
        sys.executable,
        "-m",
        VLLM_SERVER_MODULE,
        "--model",
        str(model_dir),
        "--served-model-name",
        SERVED_MODEL_NAME,
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        config.dtype,
        "--max-model-len",
        str(config.max_model_len),
        "--max-num-seqs",
        str(config.max_num_seqs),
        "--max-logprobs",
        str(MAX_LOGPROBS),
        "--logprobs-mode",
        "raw_logprobs",
        "--generation-config",
        "vllm",
        "--enable-scale-out",
        "--seed",
        str(seed),
        "--disable-uvicorn-access-log",
    ]
    if config.enforce_eager:
        command.append("--enforce-eager")
    if config.tensor_parallel_size > 1:
        command += ["--tensor-parallel-size", str(config.tensor_parallel_size)]
    if config.gpu_memory_utilization is not None:
        command += ["--gpu-memory-utilization", str(config.gpu_memory_utilization)]
    if weight_transfer_backend != "none":
        command += ["--weight-transfer-config", json.dumps({"backend": weight_transfer_backend})]
    return command + list(config.extra_args)


def build_env(config: InferenceServerConfig) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "VLLM_SERVER_DEV_MODE": "1",
            "VLLM_CPU_KVCACHE_SPACE": str(config.kv_cache_gib),
            # Nothing is downloaded at run time: models are local directories.
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
        }
    )
    return env


class VLLMServer:
    """One `vllm serve` process group: start, wait for /health, stop (or kill, for tests)."""

    def __init__(self, command: list[str], env: dict[str, str], url: str, log_path: Path) -> None:
        self.command, self.env, self.url, self.log_path = command, env, url, Path(log_path)
        self.process: subprocess.Popen[bytes] | None = None
        self.start_time_s = 0.0
        """Seconds from spawn to a healthy /health (engine start), set by wait_ready()."""
        self._started_at = 0.0

    @classmethod
    def spawn(
        cls,
        config: InferenceServerConfig,
        model_dir: str | Path,
        log_path: str | Path,
        *,
        port: int = 0,
        seed: int = 0,
        weight_transfer_backend: str = "agentrl_gloo",
    ) -> VLLMServer:
        """Start a server for `model_dir` without waiting (start several, then wait_ready)."""
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise ValueError(
                f"{model_dir} is not a checkpoint directory (no config.json); "
                "create one with `agentrl model init --out DIR`"
            )
        port = port or free_port()
        server = cls(
            build_command(
                config, model_dir, port, seed=seed, weight_transfer_backend=weight_transfer_backend
            ),
            build_env(config),
            f"http://127.0.0.1:{port}",
            Path(log_path),
        )
        server.start()
        return server

    @classmethod
    def launch(
        cls,
        config: InferenceServerConfig,
        model_dir: str | Path,
        log_path: str | Path,
        *,
        port: int = 0,
        seed: int = 0,
        weight_transfer_backend: str = "agentrl_gloo",
    ) -> VLLMServer:
        """Start a server for `model_dir` and wait until it is healthy."""
        server = cls.spawn(
            config,
            model_dir,
            log_path,
            port=port,
            seed=seed,
            weight_transfer_backend=weight_transfer_backend,
        )
        try:
            server.wait_ready(config.start_timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self._started_at = time.monotonic()
        # A new session: stop() signals the API server and its engine processes together.
        self.process = subprocess.Popen(
            self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise VLLMStartError(
                    f"vllm exited with code {self.process.returncode} while "
                    f"starting; log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    self.start_time_s = time.monotonic() - self._started_at
                    return
            except httpx.HTTPError:
                pass
            time.sleep(HEALTH_POLL_INTERVAL_S)
        raise VLLMStartError(
            f"vllm not healthy after {timeout_s:.0f} s (raise "
            f"inference.server.start_timeout_s?); log {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-LOG_TAIL_LINES:])

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the process group, SIGKILL it after `grace_s`; idempotent."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        # Engine processes may outlive the API server: kill whatever is left of the group.
        self._signal_group(signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=grace_s)

    def kill(self) -> None:
        """SIGKILL the whole server at once (a crash, for tests of failover)."""
        if self.process is not None:
            self._signal_group(signal.SIGKILL)
            self.process.wait(timeout=STOP_GRACE_S)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_from_recipe() -> None:
    """`python -m agentrl.common.inference.launcher`: become the recipe's local vLLM server (the
    local stack's `vllm` service) on the port of `inference.urls[0]`, serving
    `inference.server.model_path` (else `model.path`). The process is replaced by vLLM's, so the
    supervisor's signals reach vLLM directly."""
    from urllib.parse import urlparse

    from agentrl.common.config import load_config

    config = load_config(os.environ.get("AGENTRL_RECIPE") or None)
    model_dir = config.served_model_path()
    if model_dir is None or not (Path(model_dir) / "config.json").is_file():
        sys.exit(
            f"no checkpoint to serve at {model_dir}: set inference.server.model_path (or "
            "model.path) to a directory made by `agentrl model init` or `agentrl sft`"
        )
    url = urlparse(config.inference.urls[0])
    command = build_command(
        config.inference.server,
        Path(model_dir),
        url.port or 8000,
        host=url.hostname or "127.0.0.1",
        seed=config.run.seed,
        weight_transfer_backend=config.inference.weight_transfer_backend,
    )
    os.execve(command[0], command, build_env(config.inference.server))


if __name__ == "__main__":
    serve_from_recipe()
