"""The one typed configuration of AgentRL, loaded from a YAML recipe plus environment overrides.

Every field carries a docstring that doubles as help text (`agentrl config show [SECTION[.SUB]]`,
from `describe_fields`). A component with settings of its own gets a sub-section it takes whole
(`inference.server` for the vLLM launcher, `rollout.arpo` for the ARPO sampler, `reward.code`,
`reward.overlong`, `reward.tool_shaping`) rather than prefixed fields; `MOVED_KEYS` tells an old
recipe where its flat keys went. The schema imports nothing heavy, so every service and test can
load it.

Layering, later wins:
1. defaults in this file,
2. the YAML recipe (`agentrl config validate recipes/quickstart.yaml`),
3. environment variables `AGENTRL__<SECTION>__<FIELD>=value` (double underscores separate the
   path, sub-sections included: `AGENTRL__INFERENCE__SERVER__MAX_MODEL_LEN=2048`; values are
   parsed as YAML scalars, so `8`, `true`, `[a, b]` work). This is how Kubernetes manifests
   override a recipe.

Credentials never live here: the service token comes from `AGENTRL_AUTH_TOKEN` or a mounted file
(see agentrl.common.auth). Errors are collected, not raised one at a time: `ConfigError` lists
every problem with its dotted path, where it came from and what to change.
"""

from __future__ import annotations

import difflib
import os
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ENV_PREFIX = "AGENTRL__"
# Task types the reward service verifies without configuration (agentrl.reward.registry).
BUILTIN_TASK_TYPES = ("math", "code", "qa", "format")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, field docstrings are help text."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


class RunConfig(Section):
    run_id: str = Field(default="local", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """Names the run; Redis keys are `agentrl:{run_id}:...` so runs sharing a Redis never mix."""
    output_dir: Path = Path("runs/local")
    """Run directory: metrics JSONL, logs, checkpoints, weights, reports."""
    seed: int = 0
    """Seed for data order, sampling and initialisation."""


class ModelConfig(Section):
    path: Path
    """Hugging Face checkpoint directory (config.json, safetensors, tokenizer): the policy."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Training dtype; bfloat16 on GPUs, float32 on CPU."""


class DataConfig(Section):
    train_path: Path
    """Training prompts: JSONL or Parquet rows with prompt, ground_truth, task_type, tools."""
    eval_path: Path | None = None
    """Held-out prompts for `agentrl eval` and the evaluation during training."""


class RedisConfig(Section):
    url: str = "redis://127.0.0.1:6379/0"
    """Redis holding the run's streams, policy version and events."""
    visibility_timeout_s: float = Field(default=60.0, gt=0)
    """An entry read but not acked for this long is reclaimed by another consumer (XAUTOCLAIM)."""
    reconnect_deadline_s: float = Field(default=30.0, gt=0)
    """How long an operation keeps retrying while Redis is unreachable before it fails."""
    max_stream_length: int = Field(default=100_000, gt=0)
    """Safety cap on a stream's length (approximate MAXLEN); normal trimming follows acks."""
    local_appendfsync: Literal["always", "everysec", "no", "off"] = "everysec"
    """Persistence of the redis-server `agentrl up` starts when none answers (docs/streams.md):
    AOF with this fsync policy in `<output_dir>/redis`, so a restart keeps the queued work
    (`everysec` loses at most the last second's writes on a crash); `off` keeps nothing."""


class ServiceEndpoint(Section):
    host: str = "127.0.0.1"
    """Address the service binds to. Loopback by default: expose it only on purpose (0.0.0.0)."""
    grpc_port: int = Field(default=0, ge=0, le=65535)
    """gRPC port; 0 picks a free one (tests)."""
    http_port: int = Field(default=0, ge=0, le=65535)
    """HTTP port for /healthz, /readyz, /metrics and the compatibility APIs; 0 picks a free one."""
    address: str = ""
    """How clients reach it (host:port); empty means host:grpc_port. Kubernetes sets the DNS name."""
    max_concurrency: int = Field(default=32, gt=0)
    """Requests worked on at once by one replica; more wait in the queue."""
    queue_size: int = Field(default=256, ge=0)
    """Requests that may wait; beyond it the service answers RESOURCE_EXHAUSTED (HTTP 429)."""
    reconnect_deadline_s: float = Field(default=30.0, gt=0)
    """How long a client keeps retrying this service while it is unreachable (gRPC UNAVAILABLE:
    restarting, refused) before the call fails naming it (agentrl.common.retry)."""

    def target(self) -> str:
        return self.address or f"{self.host}:{self.grpc_port}"


class SandboxConfig(ServiceEndpoint):
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    http_port: int = Field(default=8081, ge=0, le=65535)
    addresses: list[str] = []
    """Several sandbox replicas (host:port each) for the rollout's python tool: calls of one
    session go to one replica (hash of the session id), others round-robin. Empty: `address`."""
    backend: Literal["bwrap", "docker"] = "bwrap"
    """Isolation: `bwrap` (bubblewrap namespaces, light) or `docker` (warm container pool)."""
    default_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """Wall-clock limit when a request gives none; the whole process tree is killed at it."""
    default_memory_mb: int = Field(default=512, ge=16)
    """Memory limit when a request gives none."""
    max_output_bytes: int = Field(default=64 * 1024, ge=1024)
    """stdout and stderr are each cut to this size and flagged as truncated."""
    max_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    """Largest timeout a request may ask for; beyond it the request is rejected."""
    max_memory_mb: int = Field(default=4096, ge=16)
    """Largest memory limit a request may ask for; beyond it the request is rejected."""
    max_processes: int = Field(default=64, ge=4)
    """Processes and threads one execution may have at once (pids cgroup); stops fork bombs."""
    cpu_cores: float = Field(default=1.0, gt=0)
    """CPU time one execution may use per wall second (cpu cgroup quota); 1.0 is one core."""
    disk_mb: int = Field(default=64, ge=1)
    """Size of an execution's writable space (work dir and /tmp together)."""
    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest request (code + stdin + files); larger ones are rejected (HTTP 413)."""
    queue_timeout_s: float = Field(default=30.0, gt=0)
    """Longest a request waits in the queue for a free slot before RESOURCE_EXHAUSTED."""
    python: str = "/usr/bin/python3"
    """Interpreter for `python` inside the sandbox (bwrap: a host path visible in the sandbox)."""
    ro_binds: list[str] = []
    """bwrap: extra host paths bound read-only at the same place (e.g. a venv with numpy)."""
    sandbox_uid: int = Field(default=65534, ge=1)
    """bwrap: host uid (and gid) the sandbox runs as when the service runs as root (nobody)."""
    seccomp: bool = True
    """bwrap: install the seccomp filter of services/sandbox/seccomp.py (Docker's default
    profile's deny list: ptrace, keyctl, mount, unshare, bpf...) in every sandbox."""
    work_root: Path = Path("/tmp/agentrl-sandbox")
    """bwrap: host directory holding each slot's work dir (a size-limited tmpfs when root)."""
    session_idle_s: float = Field(default=600.0, gt=0)
    """A session unused this long is closed and its interpreter state dropped."""
    max_sessions: int = Field(default=64, ge=0)
    """Sessions kept at once per replica; beyond it a new session is rejected."""
    session_memory_budget_mb: int = Field(default=0, ge=0)
    """Memory limits of all live sessions together (0: half of the host's memory); a new
    session past it evicts idle sessions, least recently used first."""
    docker_image: str = "agentrl-sandbox:latest"
    """docker: image of the warm pool (built by services/sandbox/image/build.sh)."""
    pool_size: int = Field(default=4, ge=1)
    """docker: warm containers kept ready; executions beyond it wait for a refill."""
    runs_per_container: int = Field(default=50, ge=1)
    """docker: a container is recycled after this many runs (and always after a timeout, OOM
    or a write outside the work dir)."""


class CodeVerifierConfig(Section):
    """The `code` verifier: the final program against the task's unit tests, each test one
    sandbox execution (services/reward/code_verifier.py)."""

    verifier_timeout_s: float = Field(default=60.0, gt=0)
    """Deadline of one code verification: all its unit tests through the sandbox."""
    reward_mode: Literal["all_pass", "pass_fraction", "pass_fraction_pow"] = "all_pass"
    """Code score: 1 only when every test passes; the passed fraction; or fraction^pass_power."""
    pass_power: float = Field(default=2.0, gt=0)
    """Exponent k of `pass_fraction_pow` (k > 1 favours nearly complete solutions)."""
    test_timeout_s: float = Field(default=5.0, gt=0, le=600)
    """Wall-clock limit of one unit test in the sandbox (a program that hangs fails that test)."""
    memory_mb: int = Field(default=0, ge=0)
    """Memory limit of one unit test (0: the sandbox default)."""
    max_tests: int = Field(default=50, gt=0)
    """Tests run per response; further ones are skipped (and the reason says so)."""
    max_parallel_tests: int = Field(default=4, gt=0)
    """Tests of one response in the sandbox at once."""


class OverlongPenaltyConfig(Section):
    """DAPO's soft punishment of long responses (services/reward/shaping.py)."""

    enabled: bool = True
    """DAPO soft overlong penalty: min(0, -(L - (L_max - L_buf)) / L_buf * factor)."""
    max_length_tokens: int = Field(default=20480, gt=0)
    """L_max: the response length (tool output included) at which the penalty reaches -factor."""
    buffer_tokens: int = Field(default=4096, gt=0)
    """L_buf: the penalty starts at L_max - L_buf tokens."""
    penalty_factor: float = Field(default=1.0, ge=0)
    """kappa: the penalty at L_max and beyond."""

    @model_validator(mode="after")
    def _check_overlong(self) -> OverlongPenaltyConfig:
        if self.buffer_tokens > self.max_length_tokens:
            raise ValueError(
                f"buffer_tokens ({self.buffer_tokens}) must not exceed "
                f"max_length_tokens ({self.max_length_tokens}); lower it"
            )
        return self


class ToolShapingConfig(Section):
    """Open-AgentRL's bonus for the tool calls of a wrong answer (services/reward/shaping.py)."""

    enabled: bool = False
    """Open-AgentRL tool-call shaping for wrong answers: reward min(-0.6, -1 + 0.1 k) for k calls."""
    per_call: float = Field(default=0.1, ge=0)
    """Bonus per tool call of a wrong answer (the 0.1 above)."""
    cap: float = Field(default=0.4, ge=0)
    """Largest bonus (0.4 above: a wrong answer never gets more than incorrect_reward + 0.4)."""


class ToolUseBonusConfig(Section):
    """ARPO's bonus for a correct answer that used every listed tool (services/reward/shaping.py)."""

    enabled: bool = False
    """Add `bonus` to a correct answer's reward when its calls used every tool of `tools`."""
    bonus: float = Field(default=0.1, ge=0)
    """ARPO's +0.1."""
    tools: list[str] = ["python", "search"]
    """Tools a trajectory must all have used (a call of each ran) to earn the bonus."""


class RewardConfig(ServiceEndpoint):
    """Verifiers and reward shaping (ALGORITHMS.md §3; docs/reward.md explains every verdict)."""

    grpc_port: int = Field(default=50052, ge=0, le=65535)
    http_port: int = Field(default=8082, ge=0, le=65535)
    verifier_timeout_s: float = Field(default=10.0, gt=0)
    """Deadline per verification; past it the verdict is `verifier_error`, never a silent zero."""
    num_verifier_workers: int = Field(default=2, gt=0)
    """Processes running math-verify, answer extraction and custom verifiers (killed and
    replaced when a verification passes its deadline); about one per CPU core."""
    verifier_worker_memory_mb: int = Field(default=2048, ge=0)
    """Address-space limit of each verifier process (0: none); sympy on a huge answer fails
    inside it instead of swapping the machine."""
    correct_reward: float = 1.0
    """Correctness component of a fully correct answer."""
    incorrect_reward: float = -1.0
    """Correctness component of a wrong (or missing) answer; partial scores (pass fraction, F1)
    lie linearly in between. Set 0 with correct 1 for a 0/1 reward (Search-R1)."""
    format_penalty: float = -1.0
    """Format component when the format gate fails (the correctness component is then 0)."""
    format_gate_task_types: list[str] = ["math", "qa", "code"]
    """Task types whose responses must pass the format gate (balanced tags, one final answer,
    nothing after it) before they are verified."""
    qa_metric: Literal["em", "f1"] = "em"
    """QA score: exact match (Search-R1) or token F1 (ASearcher), best over the gold aliases."""
    code: CodeVerifierConfig = CodeVerifierConfig()
    """The `code` verifier: deadline, score mode and per-test limits (`reward.code.*`)."""
    overlong: OverlongPenaltyConfig = OverlongPenaltyConfig()
    """DAPO's soft overlong penalty (`reward.overlong.*`)."""
    tool_shaping: ToolShapingConfig = ToolShapingConfig()
    """Open-AgentRL's tool-call bonus for wrong answers (`reward.tool_shaping.*`)."""
    tool_use_bonus: ToolUseBonusConfig = ToolUseBonusConfig()
    """ARPO's bonus for right answers that used every listed tool (`reward.tool_use_bonus.*`)."""
    reward_scale: float = 1.0
    """reward = reward_scale * (sum of components) + reward_bias; ASearcher: scale 10, bias -5."""
    reward_bias: float = 0.0
    """See reward_scale."""
    custom_verifiers: dict[str, str] = {}
    """Extra task types: name -> `package.module:function`, a function taking a
    `agentrl.reward.verifier.VerifyInput` and returning a `Verification`; runs in a verifier
    process under `verifier_timeout_s`."""

    @model_validator(mode="after")
    def _check_reward(self) -> RewardConfig:
        for name, path in self.custom_verifiers.items():
            if name in BUILTIN_TASK_TYPES:
                raise ValueError(f"custom_verifiers: {name!r} is a built-in task type; rename it")
            module, _, function = path.partition(":")
            if not module or not function.isidentifier():
                raise ValueError(
                    f"custom_verifiers.{name}: {path!r} must be 'package.module:function'"
                )
        return self


class SearchConfig(ServiceEndpoint):
    grpc_port: int = Field(default=50053, ge=0, le=65535)
    http_port: int = Field(default=8083, ge=0, le=65535)
    index_dir: Path = Path("data/search-index")
    """Directory written by `agentrl search index`; replicas may share it read-only."""
    default_top_k: int = Field(default=3, gt=0, le=100)
    """Passages per query when a request gives no top_k (Search-R1 uses 3)."""
    max_top_k: int = Field(default=100, gt=0, le=1000)
    """Largest top_k a request may ask for; beyond it the request is rejected."""
    extra_index_dirs: list[Path] = []
    """More index directories served beside `index_dir`, each under its manifest name (the
    `index` field of a request picks one; empty means `index_dir`)."""
    cache_size: int = Field(default=20_000, ge=0)
    """Per-query results kept in the LRU cache (keyed by index version); 0 disables it. An
    entry holds its passages: ~2 KB at top_k 3, so the default takes ~40 MB."""
    search_threads: int = Field(default=2, gt=0)
    """Batches searched at once (CPU work; about one per core). Queries arriving meanwhile
    are batched together."""
    max_batch_queries: int = Field(default=64, gt=0)
    """Most queries searched in one batch."""
    queue_timeout_s: float = Field(default=10.0, gt=0)
    """Longest a request waits for a search thread before RESOURCE_EXHAUSTED (HTTP 429)."""
    max_queries_per_request: int = Field(default=512, gt=0)
    """Most queries in one Retrieve request (and ids in one Access request)."""
    max_query_chars: int = Field(default=4096, gt=0)
    """Longest query accepted; longer ones are rejected, not cut."""
    workers: int = Field(default=0, ge=0)
    """Server processes sharing the gRPC and HTTP ports (SO_REUSEPORT; each maps the index
    read-only, so N workers do not hold N copies). 0: one per usable core (at most 8) when the
    default index holds >= 20,000 passages, else 1. Throughput grows with workers only for
    clients that open several connections (docs/search.md)."""


# `vllm serve` flags the launcher derives from the recipe: inference.server.extra_args may not
# repeat them (the later flag would silently win, or the pool would disagree with its server).
LAUNCHER_MANAGED_FLAGS = {
    "--model": "inference.server.model_path (else model.path)",
    "--served-model-name": "the launcher (the pool asks for the name 'policy')",
    "--host": "inference.urls[0]",
    "--port": "inference.urls[0]",
    "--dtype": "inference.server.dtype",
    "--max-model-len": "inference.server.max_model_len",
    "--max-num-seqs": "inference.server.max_num_seqs",
    "--max-logprobs": "the launcher (the log-probs the rollout needs)",
    "--logprobs-mode": "the launcher (the trainer recomputes raw log-probs)",
    "--generation-config": "the launcher (a task's sampling parameters must not be altered)",
    "--seed": "run.seed",
    "--tensor-parallel-size": "inference.server.tensor_parallel_size",
    "-tp": "inference.server.tensor_parallel_size",
    "--enforce-eager": "inference.server.enforce_eager",
    "--gpu-memory-utilization": "inference.server.gpu_memory_utilization",
    "--weight-transfer-config": "inference.weight_transfer_backend",
}


class InferenceServerConfig(Section):
    """How the local launcher starts `vllm serve` (`agentrl up`'s `vllm` service, tests,
    benchmarks; libs/common/inference/launcher.py). Servers on a cluster are started by their
    own manifests: only `inference.urls` reaches them."""

    model_path: Path | None = None
    """Checkpoint the local launcher serves (`agentrl up`); None: the run's `model.path`."""
    max_model_len: int = Field(default=4096, gt=0)
    """Context length of the servers (the launcher's and the chart's `--max-model-len`): an
    episode's token budget (prompt + whole episode) is capped at it, and
    rollout.max_response_tokens must stay below it."""
    kv_cache_gib: int = Field(default=1, ge=1)
    """CPU servers: KV cache size in whole GiB (VLLM_CPU_KVCACHE_SPACE, which vLLM reads as an
    integer); 1 GiB holds ~1M tokens of the tiny model."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Weights and activations of the launched servers; float32 on CPU keeps log-probs exact."""
    max_num_seqs: int = Field(default=128, gt=0)
    """Sequences a launched server batches at once."""
    start_timeout_s: float = Field(default=300.0, gt=0)
    """How long the launcher waits for a server's /health before giving up."""
    tensor_parallel_size: int = Field(default=1, ge=1)
    """GPUs one server shards the model over (`--tensor-parallel-size`); the chart sets it to
    `vllm.gpus`, the GPUs each replica requests."""
    enforce_eager: bool = True
    """`--enforce-eager`: no CUDA graphs. Needed on CPU; false on GPUs trades start time and
    memory for faster decoding."""
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    """GPU servers: the share of GPU memory vLLM may use (`--gpu-memory-utilization`); None:
    vLLM's default (0.9)."""
    extra_args: list[str] = []
    """More `vllm serve` flags, passed as given after the launcher's own, e.g.
    ["--enable-prefix-caching"]. Flags the launcher derives from other settings are refused."""

    @model_validator(mode="after")
    def _check_extra_args(self) -> InferenceServerConfig:
        for arg in self.extra_args:
            flag = arg.split("=", 1)[0]
            if flag in LAUNCHER_MANAGED_FLAGS:
                raise ValueError(
                    f"extra_args sets {flag}, which the launcher sets itself from "
                    f"{LAUNCHER_MANAGED_FLAGS[flag]}; remove it from extra_args and set that"
                )
        return self


class InferenceConfig(Section):
    """The vLLM pool that rollout workers, evaluation and the trainer's weight sync talk to
    (libs/common/inference/pool.py), and how the local launcher starts its server."""

    urls: list[str] = ["http://127.0.0.1:8000"]
    """Base URLs of the `vllm serve` pool."""
    request_timeout_s: float = Field(default=300.0, gt=0)
    """Deadline of one generation request to a vLLM server (a whole turn)."""
    max_request_retries: int = Field(default=2, ge=0)
    """Retries of a generation on another server when its server fails (connection error, 5xx)."""
    health_check_interval_s: float = Field(default=5.0, gt=0)
    """How often each vLLM server's /health is probed; a failed probe ejects it until it passes."""
    reconnect_deadline_s: float = Field(default=120.0, ge=0)
    """How long a generation waits for a server when none of the pool is healthy (a vLLM
    restart takes a minute or more) before it fails naming the pool; 0 fails at once."""
    server: InferenceServerConfig = InferenceServerConfig()
    """The locally launched server (`inference.server.*`)."""
    weight_transfer_backend: Literal["agentrl_gloo", "nccl", "none"] = "agentrl_gloo"
    """The weight-transfer engine the pool's servers run (`vllm serve --weight-transfer-config
    '{"backend": ...}'`; the local launcher passes it): `agentrl_gloo` (AgentRL's CPU engine,
    gloo over TCP, registered through vLLM's plugin entry point), `nccl` (vLLM's GPU engine),
    `none`. `trainer.weight_transport: vllm` drives it."""


class ARPOConfig(Section):
    """ARPO tree sampling (ALGORITHMS.md §4; libs/common/agent/arpo.py): how a worker branches
    the tasks that arrive with `tree_sampling` set. The switch itself stays
    `rollout.tree_sampling`: it is not the sampler's setting but a property of each task, which
    the trainer writes into every task it admits (like `max_turns` and `tool_format`); these
    parameters are the workers' and apply to any task carrying the flag."""

    initial_samples: int = Field(default=8, gt=0)
    """Global paths started per prompt, N of the budget M (tasks with `tree_sampling`)."""
    entropy_tokens: int = Field(default=20, gt=0)
    """A turn's entropy is the mean over its first k tokens."""
    top_logprobs: int = Field(default=10, gt=0)
    """Top-K log-probs per token the entropy is computed from (requested from vLLM)."""
    beta: float = Field(default=0.2, ge=0)
    """Weight of the entropy rise in P = clip(U - beta (H_t - H_init), 0, 1)."""
    tau: float = 0.5
    """Branch when P <= tau (1 branches at every tool result, below 0 never)."""
    beam_size: int = Field(default=2, gt=0)
    """At most beam_size - 1 copies branch off a path per decision."""


class RolloutConfig(ServiceEndpoint):
    grpc_port: int = Field(default=50054, ge=0, le=65535)
    http_port: int = Field(default=8084, ge=0, le=65535)
    max_concurrent_episodes: int = Field(default=64, gt=0)
    """Episodes one worker runs at once: a task starts once its n fit (a task larger than this runs
    alone) and each episode's slot is free again as soon as it ends."""
    shutdown_grace_s: float = Field(default=120.0, gt=0)
    """On SIGTERM a worker takes no new task and gives the ones in flight this long to finish and
    publish; unfinished ones are left unacked for another worker (keep it under the pod's
    terminationGracePeriodSeconds)."""
    worker_id: str = ""
    """This worker's consumer name in the prompts stream; empty: host-pid-random. A stable name
    (a StatefulSet pod's) makes a restarted worker take its own unacked tasks back at once."""
    tree_sampling: bool = False
    """ARPO switch: the trainer admits every task with `tree_sampling` set, so workers sample it
    as an entropy-branching tree (the `rollout.arpo` parameters) instead of n independent
    episodes."""
    arpo: ARPOConfig = ARPOConfig()
    """ARPO's branching parameters (`rollout.arpo.*`), used for tasks with `tree_sampling`."""
    max_turns: int | None = Field(default=None, gt=0)
    """Model turns per episode, written into each admitted task; None: the rollout default (8).
    A tool call that ends the last turn is recorded, not run: no turn could read its output."""
    max_tool_calls: int | None = Field(default=None, gt=0)
    """Tool calls per episode, written into each admitted task; None: the rollout default (8)."""
    max_response_tokens: int | None = Field(default=None, gt=0)
    """Tokens after the prompt (model tokens and tool output) per episode: a task's
    max_total_tokens becomes its prompt length plus this; None: the rollout default (4096 in
    all, prompt included)."""
    max_tokens_per_turn: int | None = Field(default=None, gt=0)
    """Tokens one model turn may generate, written into each admitted task (a turn never passes
    the episode's remaining budget anyway); None: the rollout default (512)."""
    tool_format: Literal["code_tags", "search_tags", "hermes"] = "code_tags"
    """How tool calls are written: `<code>`/`<python>`, `<search>`, or Hermes `<tool_call>{json}`."""
    tool_timeout_s: float = Field(default=10.0, gt=0)
    """Wall-clock limit of one tool call (sandbox execution)."""
    python_sessions: bool | None = None
    """Run an episode's python calls in one sandbox session (variables persist from call to
    call; closed when the episode ends); false: every call starts a fresh interpreter. None:
    on when `sandbox.backend` is bwrap (the backend with sessions), off otherwise."""
    max_group_attempts: int = Field(default=5, gt=0)
    """Attempts at a task whose group fails for an infrastructure reason (vLLM, sandbox, search
    or reward unreachable past its deadline); then the task goes back to the queue, unacked,
    for another worker (or this one, after redis.visibility_timeout_s). Never published."""


class MegatronConfig(Section):
    """The `megatron` backend's layout (docs/trainer.md, "Megatron backend"). World size =
    tensor x pipeline x data-parallel ranks; the micro-batch is `trainer.micro_batch_tokens`
    and the precision `model.dtype`, as for the torch backend."""

    tensor_parallel_size: int = Field(default=1, ge=1)
    """Ranks each layer is split over: must divide the attention heads, the key/value heads
    and the MLP hidden size of the model."""
    pipeline_parallel_size: int = Field(default=1, ge=1)
    """Pipeline stages (must divide the layers; the backend's own 1F1B schedule,
    backends/megatron/pipeline.py); a tied embedding is kept on the first and the last stage,
    their gradients summed."""
    vocab_padding_multiple: int = Field(default=128, ge=1)
    """Megatron's `make_vocab_size_divisible_by`: the embedding and output rows are padded to
    a multiple of this times tensor_parallel_size (the padding never reaches a checkpoint)."""
    recompute: Literal["none", "full", "selective"] = "none"
    """Activation recompute: `full` recomputes each layer in the backward pass (least memory),
    `selective` only the attention core."""
    distributed_optimizer: bool = False
    """Shard AdamW's state over the data-parallel ranks (ZeRO stage 1: each keeps and steps
    its share of the parameters, then broadcasts them); the same training, less memory per
    rank. torch's ZeroRedundancyOptimizer: megatron-core's own DistributedOptimizer needs CUDA."""


def megatron_layout_problems(model_config: dict[str, Any], megatron: MegatronConfig) -> list[str]:
    """What does not fit between a Hugging Face config.json and the Megatron layout (empty: it
    fits). The backend's conversion checks the same sizes (backends/megatron/convert.py)."""
    family = model_config.get("model_type")
    if family not in ("qwen3", "qwen2", "llama"):
        return [f"model_type {family!r} has no Megatron mapping; supported: qwen3, qwen2, llama"]
    tp, pp = megatron.tensor_parallel_size, megatron.pipeline_parallel_size
    heads = model_config.get("num_attention_heads", 0)
    sizes = [
        ("attention heads", heads, tp, "tensor_parallel_size"),
        (
            "key/value heads",
            model_config.get("num_key_value_heads") or heads,
            tp,
            "tensor_parallel_size",
        ),
        ("MLP hidden size", model_config.get("intermediate_size", 0), tp, "tensor_parallel_size"),
        ("layers", model_config.get("num_hidden_layers", 0), pp, "pipeline_parallel_size"),
    ]
    problems = [
        f"the model's {what} ({size}) do not divide by trainer.megatron.{setting} {by}"
        for what, size, by, setting in sizes
        if size % by
    ]
    return problems


class CollapseConfig(Section):
    """The collapse detector's thresholds (services/trainer/collapse.py); 0 turns a signal off.
    It warns in the step line and sets the `collapse_warning` metric; training is unchanged."""

    window_steps: int = Field(default=3, gt=0)
    """Each step is compared with this many previous steps."""
    max_accuracy_drop: float = Field(default=0.25, ge=0)
    """Warn when accuracy is more than this below the window's highest."""
    max_reward_drop: float = Field(default=0.5, ge=0)
    """Warn when the mean reward is more than this below the window's highest."""
    min_entropy: float = Field(default=0.01, ge=0)
    """Warn when the mean token entropy (nats) is below this floor."""
    max_length_growth: float = Field(default=4.0, ge=0)
    """Warn when the mean response length is more than this many times the window's highest
    mean (the mean: one looping episode among many moves the longest, not the mean; healthy
    quickstart runs reached 2.6, services/trainer/collapse.py)."""


class TrainerConfig(ServiceEndpoint):
    grpc_port: int = Field(default=50055, ge=0, le=65535)
    http_port: int = Field(default=8085, ge=0, le=65535)
    backend: Literal["torch", "megatron"] = "torch"
    """Training backend: Hugging Face + torch (CPU, one GPU, FSDP2) or Megatron-core."""
    batch_size: int = Field(default=64, gt=0)
    """Prompts per optimizer step (each contributes a group of samples)."""
    max_staleness: int = Field(default=4, ge=0)
    """AReaL's staleness bound eta: admit while accepted + running < (eta + version + 1) * batch."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the policy trains: `auto` picks the GPU when there is one. Compute dtype is
    `model.dtype` (bfloat16 on GPUs: autocast over float32 master weights)."""
    megatron: MegatronConfig = MegatronConfig()
    """`backend: megatron` only: tensor/pipeline sizes, vocabulary padding, recompute."""
    parallelism: Literal["single", "fsdp2"] = "single"
    """`single`: one device. `fsdp2`: data-parallel, parameters sharded over the ranks of a
    torch.distributed group (GPUs with NCCL, CPU processes with gloo); launch with
    `agentrl train|sft --nproc-per-node N` or torchrun. The model code stays single-device."""
    cpu_threads: int = Field(default=0, ge=0)
    """torch intra-op threads of the trainer and SFT processes; 0: torch's default (one per
    core). On a machine shared with vLLM, the services or other jobs, 1 avoids OpenMP threads
    spinning against each other (measured here on 2 busy cores: an RL step and an SFT step
    each about 10x faster than with 2)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    micro_batch_tokens: int = Field(default=8192, gt=0)
    """Token budget of one packed micro-batch (one forward pass); the longest sequence must fit."""
    packed_attention: Literal["mask_4d", "position_ids"] = "mask_4d"
    """How packed sequences are kept apart: an explicit block-diagonal mask (any kernel, O(T^2)
    memory) or restarting position ids only (transformers finds the boundaries; FlashAttention)."""
    max_grad_norm: float = Field(default=1.0, gt=0)
    """Gradients are clipped to this global L2 norm before each optimizer step."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW decoupled weight decay."""
    lr_warmup_steps: int = Field(default=0, ge=0)
    """Linear learning-rate warm-up from 0 over this many optimizer steps."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning rate after warm-up: constant, or decaying to 0 at `total_steps`."""
    total_steps: int | None = Field(default=None, gt=0)
    """Optimizer steps of the run; required by the `linear` and `cosine` schedules."""
    eval_samples_per_prompt: int = Field(default=0, ge=0)
    """k of the evaluations a training run makes on `data.eval_path` (`eval/before.json` before
    the first step, `eval/after.json` after the last; `agentrl eval`'s metrics); 0: none."""
    eval_interval_steps: int = Field(default=0, ge=0)
    """Also evaluate every this many steps (step 10 writes `eval/step_00000010.json`); 0: before
    and after only."""
    collapse: CollapseConfig = CollapseConfig()
    """The collapse detector (`trainer.collapse.*`): a step-line warning and a metric."""
    checkpoint_interval_steps: int = Field(default=50, gt=0)
    """Save a resumable checkpoint every this many optimizer steps."""
    keep_checkpoints: int = Field(default=3, gt=0)
    """Checkpoints kept in `<run.output_dir>/checkpoints`; older ones are deleted."""
    weight_transport: Literal["disk", "vllm"] = "vllm"
    """How new weights reach the vLLM pool after each step: `vllm` (vLLM's native
    weight-transfer API, in flight, nothing on disk; the servers must run the engine of
    `inference.weight_transfer_backend`, as `agentrl up` starts them) or `disk` (safetensors in
    the run directory, which every server must be able to read, then vLLM's reload).
    docs/trainer.md, "Weight transports"."""
    weight_sync_pause_mode: Literal["keep", "wait", "abort"] = "keep"
    """How the servers pause around a weight update: `keep` freezes in-flight requests (they
    re-prefill on the new weights, AReaL's interruptible rollout), `wait` lets them finish,
    `abort` ends them."""
    weight_sync_timeout_s: float = Field(default=300.0, gt=0)
    """Every phase of a weight sync (each transfer, each reload) fails after this long, naming
    the server and the phase; the pool keeps serving the previous version."""
    weight_transfer_address: str = "127.0.0.1"
    """`vllm` transport: the address the servers reach this trainer at for the transfer's
    process group (rendezvous on a free port); on a cluster, the trainer pod's Service name."""
    drift_check: bool = True
    """After every weight sync, compare vLLM's log-probs of one sequence just trained on with
    the trainer's, on every server (`logprob_drift_max` per step; a warning above
    `drift_threshold`). One short forward on each side."""
    drift_threshold: float = Field(default=1e-3, gt=0)
    """Largest per-token log-prob difference the drift check accepts: float32 on both sides
    agrees to ~1e-6; bf16 serving against fp32 training needs ~5e-2."""

    @model_validator(mode="after")
    def _check_trainer(self) -> TrainerConfig:
        if self.lr_schedule != "constant" and self.total_steps is None:
            raise ValueError(
                f"lr_schedule {self.lr_schedule!r} needs total_steps; set it or use 'constant'"
            )
        return self

    @model_validator(mode="after")
    def _check_megatron(self) -> TrainerConfig:
        if self.backend != "megatron":
            return self
        if self.parallelism != "single":
            raise ValueError(
                "backend 'megatron' parallelises by trainer.megatron's sizes; leave "
                "trainer.parallelism at 'single' (fsdp2 is the torch backend's)"
            )
        return self


class AlgorithmConfig(Section):
    """The policy objective and advantages of ALGORITHMS.md, sections 1 and 2."""

    advantage: Literal["grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"] = "grpo"
    """Advantage estimator (docs/algorithms.md): per sample `grpo`, `rloo`; per token
    `reinforce_pp` (discounted returns whitened over the batch's tokens, no baseline) and
    `reinforce_pp_baseline` (group mean subtracted first)."""
    gamma: float = Field(default=1.0, ge=0, le=1)
    """Discount of the REINFORCE++ token returns (per model token back from the last one)."""
    arpo_attribution: Literal["soft", "hard"] = "soft"
    """ARPO advantage attribution on tree-sampled groups: `soft` is plain per-sample advantages;
    `hard` gives tokens shared by several branches the mean advantage of those branches."""
    grpo_std_normalize: bool = True
    """Divide GRPO advantages by the group std (False: Dr. GRPO)."""
    group_size: int = Field(default=16, gt=0)
    """Samples per prompt n (ARPO: the budget M)."""
    clip_low: float = Field(default=0.2, gt=0, lt=1)
    """epsilon_low of the clipped surrogate."""
    clip_high: float = Field(default=0.28, gt=0)
    """epsilon_high (clip-higher, DAPO); equal to clip_low for a symmetric clip."""
    dual_clip: float | None = Field(default=3.0, gt=1)
    """Dual-clip constant c for negative advantages; null disables it."""
    loss_agg: Literal[
        "token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
    ] = "token-mean"
    """Loss aggregation; token-mean divides by the global token count across micro-batches."""
    kl_coef: float = Field(default=0.0, ge=0)
    """KL-to-reference coefficient; > 0 keeps a frozen copy of the initial weights (model.path)
    on the trainer as the reference (services/trainer/reference.py)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator in the loss (k3 clamped as verl does); all three are logged with a reference."""
    log_reference_kl: bool = False
    """Keep the reference at kl_coef 0 too, to log the KL (kl_k1/k2/k3) without a penalty: one
    more forward per step. Without a reference no kl_* metric is logged."""
    entropy_coef: float = Field(default=0.0, ge=0)
    """Entropy bonus coefficient (entropy is always logged)."""
    dynamic_sampling: bool = True
    """Drop groups whose rewards are all equal (no signal) and sample more in their place."""
    dynamic_sampling_max_batches: int = Field(default=4, gt=0)
    """DAPO's cap on extra generation: a step reads at most this many batches' worth of groups;
    then it trains on what it has, zero-signal groups filling the batch (advantage 0), and
    counts the step as capped (`dynamic_sampling_capped`). Without it a policy that is always
    right (or always wrong) would wait forever."""
    learning_rate: float = Field(default=1e-6, gt=0)
    """Optimizer learning rate."""
    loss_agg_norm_length_tokens: int | None = Field(default=None, gt=0)
    """Constant divisor of `seq-mean-token-sum-norm` (Dr. GRPO): the maximum response length in
    tokens; required by that mode, unused by the others."""
    gspo: bool = False
    """GSPO: one ratio per sequence, exp(mean_t log r_t), clipped per sequence (pair it with
    much smaller clip_low/clip_high, e.g. 3e-4/4e-4, and seq-mean-token-mean)."""
    decoupled_ppo: bool = False
    """AReaL decoupled PPO: clip against the proximal policy (weights before this update) and
    weight each token by pi_prox / pi_behav (the policy that sampled it)."""
    behaviour_weight_cap: float = Field(default=5.0, ge=1)
    """Cap on the decoupled-PPO behaviour weight pi_prox / pi_behav."""
    behaviour_weight_cap_mode: Literal["clamp", "mask"] = "mask"
    """Above the cap: `clamp` the weight to the cap, or `mask` the token out of the loss
    (weight 0, as AReaL does; it still counts in the token-mean normaliser)."""

    @model_validator(mode="after")
    def _check_algorithm(self) -> AlgorithmConfig:
        if self.clip_high < self.clip_low:
            raise ValueError(
                f"clip_high ({self.clip_high}) must be >= clip_low ({self.clip_low}); "
                "set clip_high = clip_low for a symmetric clip"
            )
        if self.arpo_attribution == "hard" and self.advantage not in ("grpo", "rloo"):
            raise ValueError(
                f"arpo_attribution 'hard' spreads one advantage per sample over the tree; "
                f"advantage {self.advantage!r} gives one per token: use grpo or rloo, or "
                "arpo_attribution: soft"
            )
        if self.loss_agg == "seq-mean-token-sum-norm" and self.loss_agg_norm_length_tokens is None:
            raise ValueError(
                "loss_agg_norm_length_tokens is required by loss_agg 'seq-mean-token-sum-norm'; "
                "set it to the maximum response length in tokens"
            )
        return self


class SFTConfig(Section):
    """Supervised fine-tuning on multi-turn tool-use trajectories (`agentrl sft`, docs/sft.md)."""

    train_path: Path | None = None
    """JSONL of chat trajectories: {"messages": [{"role": system|user|assistant|tool, ...}]}."""
    output_dir: Path | None = None
    """Where the fine-tuned Hugging Face checkpoint goes; default `<run.output_dir>/sft`."""
    num_epochs: int = Field(default=3, gt=0)
    """Passes over the trajectories (ignored when `max_steps` is set)."""
    max_steps: int | None = Field(default=None, gt=0)
    """Stop after this many optimizer steps instead of after `num_epochs`."""
    batch_size: int = Field(default=16, gt=0)
    """Trajectories per optimizer step (loss: mean over their assistant tokens)."""
    micro_batch_tokens: int = Field(default=8192, gt=0)
    """Token budget of one packed micro-batch."""
    max_length_tokens: int = Field(default=4096, gt=0)
    """Longer trajectories are dropped (and counted) rather than cut mid-turn."""
    learning_rate: float = Field(default=1e-5, gt=0)
    """AdamW learning rate."""
    lr_warmup_steps: int = Field(default=0, ge=0)
    """Linear warm-up from 0 over this many steps; then cosine decay to 0 at the last step."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW decoupled weight decay."""
    max_grad_norm: float = Field(default=1.0, gt=0)
    """Global gradient-norm clip."""
    cpu_threads: int | None = Field(default=None, ge=0)
    """Torch CPU threads for SFT; None: `trainer.cpu_threads`. SFT usually runs alone (the
    quickstarts bring the stack up after it), so it may take every core where RL must share."""
    prompt_format: Literal["chat_template", "plain"] = "chat_template"
    """How system/user messages become the prompt: the tokenizer's chat template with an open
    assistant turn, or the contents joined by newlines. Must match the trainer's prompts."""


class AgentRLConfig(Section):
    """A whole run: one recipe file resolves to this."""

    run: RunConfig = RunConfig()
    """Identity and output of the run."""
    model: ModelConfig | None = None
    """The policy checkpoint; required by jobs that load a model."""
    data: DataConfig | None = None
    """Data sets; required by training and evaluation."""
    redis: RedisConfig = RedisConfig()
    """The asynchronous spine."""
    sandbox: SandboxConfig = SandboxConfig()
    """Code sandbox service."""
    reward: RewardConfig = RewardConfig()
    """Reward/verifier service."""
    search: SearchConfig = SearchConfig()
    """Search tool service."""
    inference: InferenceConfig = InferenceConfig()
    """The vLLM pool (and the server `agentrl up` launches)."""
    rollout: RolloutConfig = RolloutConfig()
    """Rollout workers: episodes, tools, ARPO."""
    trainer: TrainerConfig = TrainerConfig()
    """The RL driver."""
    algorithm: AlgorithmConfig = AlgorithmConfig()
    """Objective and advantages."""
    sft: SFTConfig = SFTConfig()
    """Supervised cold start on tool-use trajectories."""

    @model_validator(mode="after")
    def _check_megatron_layout(self) -> AgentRLConfig:
        if self.trainer.backend != "megatron" or self.model is None:
            return self
        if self.trainer.device == "cpu" and self.model.dtype != "float32":
            raise ValueError(
                f"model.dtype {self.model.dtype} with trainer.backend megatron on "
                "trainer.device cpu: megatron-core's layers train bfloat16 on CUDA only; use "
                "model.dtype: float32 on CPU"
            )
        if self.trainer.device == "cpu" and self.trainer.megatron.recompute != "none":
            raise ValueError(
                "trainer.megatron.recompute needs CUDA (megatron-core's activation checkpoint "
                "saves the CUDA RNG state); use recompute: none with trainer.device cpu"
            )
        config_json = self.model.path / "config.json"
        if not config_json.is_file():
            return self  # the model is made later (`agentrl model init`); checked at start
        import json

        problems = megatron_layout_problems(
            json.loads(config_json.read_text()), self.trainer.megatron
        )
        if problems:
            raise ValueError(
                f"{config_json} does not fit the Megatron layout: {'; '.join(problems)}; "
                "change trainer.megatron's sizes"
            )
        return self

    @model_validator(mode="after")
    def _check_episode_fits_engine(self) -> AgentRLConfig:
        response, context = self.rollout.max_response_tokens, self.inference.server.max_model_len
        if response is not None and response >= context:
            raise ValueError(
                f"rollout.max_response_tokens ({response}) leaves no room for a prompt in "
                f"inference.server.max_model_len ({context}), the engine's context (prompt + "
                "whole episode; the launcher and the chart start vLLM with it): raise "
                "inference.server.max_model_len to at least the longest prompt plus "
                f"{response} (for an engine you run yourself, set it to that engine's "
                "--max-model-len), or lower rollout.max_response_tokens"
            )
        return self

    @model_validator(mode="after")
    def _check_python_sessions(self) -> AgentRLConfig:
        if self.rollout.python_sessions is None:
            self.rollout.python_sessions = self.sandbox.backend == "bwrap"
        elif self.rollout.python_sessions and self.sandbox.backend != "bwrap":
            raise ValueError(
                f"rollout.python_sessions needs sandbox sessions, which the "
                f"{self.sandbox.backend!r} sandbox backend does not have; set "
                "rollout.python_sessions: false (every call starts a fresh interpreter) or "
                "sandbox.backend: bwrap"
            )
        return self

    @model_validator(mode="after")
    def _check_weight_transport(self) -> AgentRLConfig:
        if self.trainer.weight_transport != "vllm":
            return self
        engine = self.inference.weight_transfer_backend
        if engine == "none":
            raise ValueError(
                "trainer.weight_transport 'vllm' needs servers started with a weight-transfer "
                "engine, but inference.weight_transfer_backend is 'none'; set it to "
                "'agentrl_gloo' (and restart the servers) or use trainer.weight_transport: disk"
            )
        if engine == "nccl":
            raise ValueError(
                "trainer.weight_transport 'vllm' with inference.weight_transfer_backend 'nccl' is "
                "not built: the native transport drives the 'agentrl_gloo' engine only (vLLM's "
                "NCCL engine is untested here without a GPU build of vLLM); on GPU nodes use "
                "trainer.weight_transport: disk, or agentrl_gloo"
            )
        return self

    def served_model_path(self) -> Path | None:
        """The checkpoint the vLLM pool serves: `inference.server.model_path`, else `model.path`."""
        return self.inference.server.model_path or (self.model.path if self.model else None)


# Keys that moved when flat prefixes became sub-sections: an old recipe or variable is told
# where its key went instead of getting a bare "unknown key".
MOVED_KEYS: dict[str, str] = {
    "rollout.inference_urls": "inference.urls",
    **{
        f"rollout.{key}": f"inference.{key}"
        for key in ("request_timeout_s", "max_request_retries", "health_check_interval_s")
    },
    # The launcher's settings when they were `rollout.vllm_*` (fields added since never had
    # the old form).
    **{
        f"rollout.vllm_{key}": f"inference.server.{key}"
        for key in (
            "model_path",
            "max_model_len",
            "kv_cache_gib",
            "dtype",
            "max_num_seqs",
            "start_timeout_s",
        )
    },
    **{f"rollout.arpo_{key}": f"rollout.arpo.{key}" for key in ARPOConfig.model_fields},
    **{f"reward.code_{key}": f"reward.code.{key}" for key in CodeVerifierConfig.model_fields},
    **{
        f"reward.overlong_{key}": f"reward.overlong.{key}"
        for key in OverlongPenaltyConfig.model_fields
    },
    **{
        f"reward.tool_shaping_{key}": f"reward.tool_shaping.{key}"
        for key in ToolShapingConfig.model_fields
    },
}


class ConfigIssue(BaseModel):
    path: str
    message: str
    source: str


class ConfigError(ValueError):
    """Every problem in a recipe and its overrides, each with its path and what to change."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = issues
        lines = [f"  {i.path}: {i.message} [{i.source}]" for i in issues]
        super().__init__(f"{len(issues)} config error(s):\n" + "\n".join(lines))


def load_config(
    recipe: str | Path | None = None, env: dict[str, str] | None = None
) -> AgentRLConfig:
    """Resolve defaults <- recipe <- environment; raise ConfigError listing every problem."""
    env = dict(os.environ if env is None else env)
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if recipe is not None:
        data = _read_recipe(Path(recipe))
        for path in _leaf_paths(data):
            sources[path] = str(recipe)
    env_issues = _apply_env(data, env, sources)
    try:
        config = AgentRLConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(env_issues + [_explain(e, sources) for e in exc.errors()]) from None
    if env_issues:
        raise ConfigError(env_issues)
    return config


def _read_recipe(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            [
                ConfigIssue(
                    path="(file)",
                    source=str(path),
                    message="recipe not found; pass the path of a YAML file",
                )
            ]
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(
            [ConfigIssue(path="(file)", source=str(path), message=f"not valid YAML{line}: {exc}")]
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            [
                ConfigIssue(
                    path="(file)",
                    source=str(path),
                    message="the top level must be a mapping of sections",
                )
            ]
        )
    return data


def _leaf_paths(data: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        paths.append(path)
        if isinstance(value, dict):
            paths.extend(_leaf_paths(value, path + "."))
    return paths


def _apply_env(
    data: dict[str, Any], env: dict[str, str], sources: dict[str, str]
) -> list[ConfigIssue]:
    issues = []
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(parts):
            issues.append(
                ConfigIssue(
                    path=name,
                    source="environment",
                    message="empty path segment; use AGENTRL__SECTION__FIELD",
                )
            )
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
        sources[".".join(parts)] = f"env {name}"
    return issues


def _explain(error: dict[str, Any], sources: dict[str, str]) -> ConfigIssue:
    """Turn one pydantic error into a message that says what to change."""
    loc = [str(p) for p in error["loc"]]
    path = ".".join(loc)
    kind = error["type"]
    # A missing key has no source of its own: name the file or variable that set its section.
    source = next(
        (
            sources[".".join(loc[:n])]
            for n in range(len(loc), 0, -1)
            if ".".join(loc[:n]) in sources
        ),
        "default",
    )
    model = _model_at(loc[:-1])
    if kind == "missing":
        message = "required field is missing; add it"
    elif kind == "extra_forbidden" and path in MOVED_KEYS:
        moved = MOVED_KEYS[path]
        message = f"unknown key; moved to {moved}"
        if source.startswith("env "):
            message += f" (env {ENV_PREFIX}{moved.upper().replace('.', '__')})"
    elif kind == "extra_forbidden":
        known = list(model.model_fields) if model else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(known)}"
        message = f"unknown key; {hint}"
    elif kind == "literal_error":
        message = f"got {error.get('input')!r}; {error['msg'].lower()}"
    elif kind == "value_error" and len(loc) < 2:
        # A check across sections (or of a whole section): its message names the fields.
        message = error["msg"].removeprefix("Value error, ")
        path = path or "(recipe)"
    elif kind == "value_error":
        message = f"got {error.get('input')!r}; {error['msg'].removeprefix('Value error, ')}"
    else:
        message = f"got {error.get('input')!r}; {error['msg']}"
    field = model.model_fields.get(loc[-1]) if model and loc else None
    if field is not None and field.description and kind != "extra_forbidden":
        message += f" ({field.description.splitlines()[0]})"
    return ConfigIssue(path=path, message=message, source=source)


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = AgentRLConfig
    for part in loc:
        field = model.model_fields.get(part) if model else None
        model = section_model(field.annotation) if field else None
    return model


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The section a field holds (`X` or `X | None`); None for a plain value."""
    candidates = typing.get_args(annotation) or (annotation,)
    found = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    return found[0] if found else None


class FieldHelp(typing.NamedTuple):
    """One row of `agentrl config show`."""

    path: str
    type: str
    default: str
    help: str


def describe_fields(path: str = "") -> list[FieldHelp]:
    """Every field under the section or sub-section `path` (`sandbox`, `inference.server`; empty:
    all), a sub-section as a row of its own followed by its fields; a field's path gives its own
    row. Raises ValueError naming what there is when `path` is neither."""
    model: type[BaseModel] = AgentRLConfig
    prefix = ""
    parts = path.split(".") if path else []
    for n, part in enumerate(parts):
        field = model.model_fields.get(part)
        inner = section_model(field.annotation) if field else None
        if field is not None and inner is None and n == len(parts) - 1:
            return [row for row in _field_rows(model, prefix) if row.path == path]
        if inner is None:
            what = "section" if not prefix else "sub-section or field"
            known = [prefix + k for k in model.model_fields]
            raise ValueError(f"unknown {what} {prefix + part!r}; one of: {', '.join(known)}")
        model, prefix = inner, f"{prefix}{part}."
    return _field_rows(model, prefix)


def _field_rows(model: type[BaseModel], prefix: str) -> list[FieldHelp]:
    rows = []
    for name, field in model.model_fields.items():
        inner = section_model(field.annotation)
        text = " ".join((field.description or "").split())
        if inner is not None:
            rows.append(FieldHelp(prefix + name, "section", "", text))
            rows.extend(_field_rows(inner, f"{prefix}{name}."))
            continue
        type_name = str(field.annotation).replace("typing.", "").replace("<class '", "")
        default = "(required)" if field.is_required() else repr(field.default)
        rows.append(FieldHelp(prefix + name, type_name.replace("'>", ""), default, text))
    return rows


def dump_config(config: AgentRLConfig) -> str:
    """The resolved config as YAML (what `agentrl config validate` prints)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
