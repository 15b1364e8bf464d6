"""The one typed configuration of AgentRL, loaded from a YAML recipe plus environment overrides.

Every field carries a docstring that doubles as help text (`agentrl config show`). The schema
imports nothing heavy, so every service and test can load it.

Layering, later wins:
1. defaults in this file,
2. the YAML recipe (`agentrl config validate recipes/quickstart.yaml`),
3. environment variables `AGENTRL__<SECTION>__<FIELD>=value` (double underscores separate the
   path; values are parsed as YAML scalars, so `8`, `true`, `[a, b]` work). This is how
   Kubernetes manifests override a recipe.

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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "AGENTRL__"


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

    def target(self) -> str:
        return self.address or f"{self.host}:{self.grpc_port}"


class SandboxConfig(ServiceEndpoint):
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    http_port: int = Field(default=8081, ge=0, le=65535)
    backend: Literal["bwrap", "docker"] = "bwrap"
    """Isolation: `bwrap` (bubblewrap namespaces, light) or `docker` (warm container pool)."""
    default_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """Wall-clock limit when a request gives none; the whole process tree is killed at it."""
    default_memory_mb: int = Field(default=512, ge=16)
    """Memory limit when a request gives none."""
    max_output_bytes: int = Field(default=64 * 1024, ge=1024)
    """stdout and stderr are each cut to this size and flagged as truncated."""


class RewardConfig(ServiceEndpoint):
    grpc_port: int = Field(default=50052, ge=0, le=65535)
    http_port: int = Field(default=8082, ge=0, le=65535)
    verifier_timeout_s: float = Field(default=10.0, gt=0)
    """Deadline per verification; past it the verdict is `verifier_error`, never a silent zero."""


class SearchConfig(ServiceEndpoint):
    grpc_port: int = Field(default=50053, ge=0, le=65535)
    http_port: int = Field(default=8083, ge=0, le=65535)
    index_dir: Path = Path("data/search-index")
    """Directory written by `agentrl search index`; replicas may share it read-only."""
    default_top_k: int = Field(default=3, gt=0, le=100)
    """Passages per query when a request gives no top_k (Search-R1 uses 3)."""


class RolloutConfig(ServiceEndpoint):
    grpc_port: int = Field(default=50054, ge=0, le=65535)
    http_port: int = Field(default=8084, ge=0, le=65535)
    inference_urls: list[str] = ["http://127.0.0.1:8000"]
    """Base URLs of the `vllm serve` pool."""
    max_concurrent_episodes: int = Field(default=64, gt=0)
    """Episodes one worker runs at once."""
    tool_format: Literal["code_tags", "search_tags", "hermes"] = "code_tags"
    """How tool calls are written: `<code>`/`<python>`, `<search>`, or Hermes `<tool_call>{json}`."""


class TrainerConfig(ServiceEndpoint):
    grpc_port: int = Field(default=50055, ge=0, le=65535)
    http_port: int = Field(default=8085, ge=0, le=65535)
    backend: Literal["torch", "megatron"] = "torch"
    """Training backend: Hugging Face + torch (CPU, one GPU, FSDP2) or Megatron-core."""
    batch_size: int = Field(default=64, gt=0)
    """Prompts per optimizer step (each contributes a group of samples)."""
    max_staleness: int = Field(default=4, ge=0)
    """AReaL's staleness bound eta: admit while accepted + running < (eta + version + 1) * batch."""


class AlgorithmConfig(Section):
    """The policy objective and advantages of ALGORITHMS.md, sections 1 and 2."""

    advantage: Literal["grpo", "rloo", "reinforce_pp"] = "grpo"
    """Advantage estimator."""
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
    loss_agg: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                      "seq-mean-token-sum-norm"] = "token-mean"
    """Loss aggregation; token-mean divides by the global token count across micro-batches."""
    kl_coef: float = Field(default=0.0, ge=0)
    """KL-to-reference coefficient (KL is logged even at 0)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator."""
    entropy_coef: float = Field(default=0.0, ge=0)
    """Entropy bonus coefficient (entropy is always logged)."""
    dynamic_sampling: bool = True
    """Drop groups whose rewards are all equal (no signal)."""
    learning_rate: float = Field(default=1e-6, gt=0)
    """Optimizer learning rate."""


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
    rollout: RolloutConfig = RolloutConfig()
    """Rollout workers and the vLLM pool they use."""
    trainer: TrainerConfig = TrainerConfig()
    """The RL driver."""
    algorithm: AlgorithmConfig = AlgorithmConfig()
    """Objective and advantages."""


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


def load_config(recipe: str | Path | None = None, env: dict[str, str] | None = None) -> AgentRLConfig:
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
        raise ConfigError([ConfigIssue(path="(file)", source=str(path),
                                       message="recipe not found; pass the path of a YAML file")])
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError([ConfigIssue(path="(file)", source=str(path),
                                       message=f"not valid YAML{line}: {exc}")]) from None
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(path="(file)", source=str(path),
                                       message="the top level must be a mapping of sections")])
    return data


def _leaf_paths(data: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        paths.append(path)
        if isinstance(value, dict):
            paths.extend(_leaf_paths(value, path + "."))
    return paths


def _apply_env(data: dict[str, Any], env: dict[str, str], sources: dict[str, str]) -> list[ConfigIssue]:
    issues = []
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        if not all(parts):
            issues.append(ConfigIssue(path=name, source="environment",
                                      message="empty path segment; use AGENTRL__SECTION__FIELD"))
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
    source = next((sources[".".join(loc[:n])] for n in range(len(loc), 0, -1)
                   if ".".join(loc[:n]) in sources), "default")
    model = _model_at(loc[:-1])
    if kind == "missing":
        message = "required field is missing; add it"
    elif kind == "extra_forbidden":
        known = list(model.model_fields) if model else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(known)}"
        message = f"unknown key; {hint}"
    elif kind == "literal_error":
        message = f"got {error.get('input')!r}; {error['msg'].lower()}"
    else:
        message = f"got {error.get('input')!r}; {error['msg']}"
    field = model.model_fields.get(loc[-1]) if model else None
    if field is not None and field.description and kind != "extra_forbidden":
        message += f" ({field.description.splitlines()[0]})"
    return ConfigIssue(path=path, message=message, source=source)


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = AgentRLConfig
    for part in loc:
        field = model.model_fields.get(part)
        candidates = typing.get_args(field.annotation) or (field.annotation,) if field else ()
        found = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not found:
            return None
        model = found[0]
    return model


def dump_config(config: AgentRLConfig) -> str:
    """The resolved config as YAML (what `agentrl config validate` prints)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
