"""`agentrl dry-run`: check that a recipe can run before a cluster spends GPU hours on it.

    results = run_dry_run(Path("recipes/research/search_r1.yaml"))
    print(format_report(results))        # one row per check: ok / FAIL (with a fix) / skip

In order:
1. the config resolves (recipe plus AGENTRL__* overrides); when it does not, nothing else runs;
2. files, in parallel: data.train_path and data.eval_path parse with the trainer's
   `load_prompts`, sft.train_path with `load_trajectories`, and model.path holds a config.json
   that parses and a tokenizer (tokenizer.json, tokenizer.model or vocab.json);
3. services, in parallel: Redis answers PING at redis.url; the standard gRPC health service
   reports the service's own name SERVING at the reward address, at the sandbox's when tasks
   run code (the `code_tags` format, a `python` tool, a `code` task), at the search's when they
   search (the `search_tags` format, a `search` tool), at the rollout's when rollout.address is
   set; every URL of inference.urls answers GET /health with 200. Which tools and task
   types the tasks use is read from data.train_path; without it the tool format decides
   (`hermes` then checks both sandbox and search).

Every check runs in its own daemon thread under a deadline: service checks get `timeout_s`,
file checks `file_timeout_s` (parsing a large data set on a shared volume takes longer than a
ping). A check still running at its deadline (a DNS lookup that never returns, a hung mount) is
reported failed and left behind, so no check can hang the command.

What this does NOT check: that this machine's auth token is accepted (gRPC health is exempt
from auth), that the vLLM servers serve model.path, GPUs, or that the search index covers the
data. Nothing heavy is imported at module level: each check imports what it needs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

Status = Literal["ok", "FAIL", "skip"]
# A check's own timeouts (socket, RPC deadline) fire first and say more than "no answer"; the
# thread's deadline is this much later, for what those timeouts do not cover (DNS lookups).
DEADLINE_SLACK_S = 1.0
# Files a Hugging Face tokenizer loads its vocabulary from (fast, sentencepiece, BPE).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# grpc.health.v1 service names of the AgentRL services: (proto module, service in it).
GRPC_SERVICES = {
    "sandbox": ("agentrl.proto.sandbox.v1.sandbox_pb2", "SandboxService"),
    "reward": ("agentrl.proto.reward.v1.reward_pb2", "RewardService"),
    "search": ("agentrl.proto.search.v1.search_pb2", "SearchService"),
    "rollout": ("agentrl.proto.rollout.v1.rollout_pb2", "RolloutControlService"),
}


@dataclass(frozen=True)
class CheckResult:
    check: str
    """What was checked: `config`, `redis`, `sandbox`, `vllm`, `data.train_path`, ..."""
    target: str
    """The address, URL or path it was checked at (passwords hidden)."""
    status: Status
    detail: str
    """What was found (or why the check was skipped)."""
    fix: str = ""
    """What to change; set when the check failed."""


class CheckFailed(Exception):
    """Raised by a probe: `detail` is what went wrong, `fix` overrides the check's own fix."""

    def __init__(self, detail: str, fix: str = "") -> None:
        super().__init__(detail)
        self.detail, self.fix = detail, fix


@dataclass(frozen=True)
class Check:
    name: str
    target: str
    probe: Callable[[], str]
    """Returns the detail of a passed check; raises (CheckFailed or anything) when it fails."""
    fix: str
    timeout_s: float


def run_dry_run(
    recipe: str | Path,
    *,
    env: dict[str, str] | None = None,
    timeout_s: float = 5.0,
    file_timeout_s: float = 30.0,
) -> list[CheckResult]:
    """Every check of the module docstring, in order; `env` defaults to os.environ."""
    from agentrl.common.config import ConfigError, load_config

    try:
        config = load_config(recipe, env=env)
    except ConfigError as exc:
        return [
            CheckResult(
                "config",
                issue.path,
                "FAIL",
                issue.message,
                f"change it in {issue.source} (`agentrl config show` lists the keys)",
            )
            for issue in exc.issues
        ]
    results = [CheckResult("config", str(recipe), "ok", f"valid; run_id {config.run.run_id}")]
    prompts: dict[str, list] = {}
    results += run_checks(file_checks(config, prompts, file_timeout_s))
    train_rows = prompts.get("data.train_path")
    results += run_checks(service_checks(config, train_rows, timeout_s))
    return results + skipped_services(config, train_rows)


def run_checks(checks: list[Check]) -> list[CheckResult]:
    """Run `checks` at once, each in a daemon thread; results in the order of `checks`."""
    results: list[CheckResult | None] = [None] * len(checks)

    def work(index: int, check: Check) -> None:
        try:
            detail = check.probe()
            results[index] = CheckResult(check.name, check.target, "ok", detail)
        except CheckFailed as exc:
            results[index] = CheckResult(
                check.name, check.target, "FAIL", exc.detail, exc.fix or check.fix
            )
        except Exception as exc:  # noqa: BLE001 - any error of a probe is that check's failure
            results[index] = CheckResult(
                check.name, check.target, "FAIL", f"{type(exc).__name__}: {exc}", check.fix
            )

    started = time.monotonic()
    threads = [
        threading.Thread(target=work, args=(i, c), daemon=True, name=f"dry-run-{c.name}")
        for i, c in enumerate(checks)
    ]
    for thread in threads:
        thread.start()
    for thread, check in zip(threads, checks, strict=True):
        thread.join(max(0.0, started + check.timeout_s + DEADLINE_SLACK_S - time.monotonic()))
    return [
        result
        or CheckResult(
            check.name, check.target, "FAIL", f"no answer within {check.timeout_s:g} s", check.fix
        )
        for result, check in zip(results, checks, strict=True)
    ]


FILE_KEYS = ("data.train_path", "data.eval_path", "sft.train_path", "model.path")
# The checkpoint the vLLM pool serves: inference.server.model_path, else model.path.
SERVED_MODEL = "served model"


def file_checks(
    config: Any, prompts: dict[str, list], timeout_s: float, keys: tuple[str, ...] = FILE_KEYS
) -> list[Check]:
    """Data sets, SFT trajectories and the model directory (those of `keys` the config sets);
    parsed rows land in `prompts`."""
    checks = []
    if config.data is not None:
        for key in ("train_path", "eval_path"):
            path = getattr(config.data, key)
            if path is not None and f"data.{key}" in keys:
                checks.append(
                    Check(
                        f"data.{key}",
                        str(path),
                        _prompts_probe(path, prompts, f"data.{key}"),
                        "fix that row (JSONL or Parquet rows with prompt, ground_truth, task_type, "
                        "optional tools and id: services/trainer/data.py)",
                        timeout_s,
                    )
                )
    if config.sft.train_path is not None and "sft.train_path" in keys:
        # Imported here, outside the deadline: sft.py imports torch, which takes seconds.
        from agentrl.trainer.sft import load_trajectories

        checks.append(
            Check(
                "sft.train_path",
                str(config.sft.train_path),
                _file_probe(
                    config.sft.train_path,
                    "sft.train_path",
                    lambda path: f"{len(load_trajectories(path))} trajectories",
                ),
                'fix that line (JSONL rows {"messages": [{"role": ..., "content": ...}]}: '
                "docs/sft.md)",
                timeout_s,
            )
        )
    if config.model is not None and "model.path" in keys:
        checks.append(model_check("model.path", config.model.path, timeout_s))
    if SERVED_MODEL in keys and config.served_model_path() is not None:
        key = "inference.server.model_path" if config.inference.server.model_path else "model.path"
        checks.append(model_check(key, config.served_model_path(), timeout_s))
    return checks


def model_check(key: str, path: Path, timeout_s: float) -> Check:
    """The checkpoint directory that setting `key` names holds a model transformers can load."""
    return Check(
        key,
        str(path),
        partial(_model_probe, path),
        f"point {key} at a Hugging Face checkpoint directory (config.json, weights, tokenizer "
        "files) on a volume this machine mounts; for a tiny model of your own, `agentrl model "
        "init --preset tiny --out DIR`; a recipe whose model is its SFT output (sft.output_dir) "
        "needs `agentrl sft -r RECIPE` first",
        timeout_s,
    )


def _file_probe(path: Path, key: str, parse: Callable[[Path], str]) -> Callable[[], str]:
    """`parse(path)` as a probe: a missing file and a ValueError are failures with a fix."""

    def probe() -> str:
        if not path.is_file():
            raise CheckFailed(
                f"{path} not found", f"copy the prepared file there or point {key} at it"
            )
        try:
            return parse(path)
        except ValueError as exc:
            raise CheckFailed(str(exc)) from None

    return probe


def _prompts_probe(path: Path, prompts: dict[str, list], key: str) -> Callable[[], str]:
    def parse(path: Path) -> str:
        from agentrl.trainer.data import load_prompts

        rows = load_prompts(path)
        prompts[key] = rows
        task_types = sorted({r.task_type for r in rows})
        tools = sorted({t for r in rows for t in r.tools})
        return (
            f"{len(rows)} prompts; task types: {', '.join(task_types)}; tools: "
            f"{', '.join(tools) or 'none'}"
        )

    return _file_probe(path, key, parse)


def _model_probe(path: Path) -> str:
    if not path.exists():
        raise CheckFailed(f"{path} does not exist")
    if not path.is_dir():
        raise CheckFailed(f"{path} is not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckFailed(f"no config.json in {path}")
    try:
        model_config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckFailed(
            f"{config_file} does not parse ({exc}); an incomplete copy or a Git LFS pointer?",
            "copy the checkpoint again, completely",
        ) from None
    found = [name for name in TOKENIZER_FILES if (path / name).is_file()]
    if not found:
        raise CheckFailed(
            f"no tokenizer in {path} (none of {', '.join(TOKENIZER_FILES)})",
            "save the tokenizer next to the weights (tokenizer.save_pretrained)",
        )
    if "tokenizer.json" in found:
        try:
            json.loads((path / "tokenizer.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckFailed(
                f"{path / 'tokenizer.json'} does not parse ({exc})",
                "copy the tokenizer files again, completely",
            ) from None
    weights = [p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin")]
    model_type = model_config.get("model_type", "?") if isinstance(model_config, dict) else "?"
    return f"model_type {model_type}; tokenizer: {', '.join(found)}; {len(weights)} weight files"


def uses_tools(config: Any, rows: list | None) -> dict[str, str]:
    """Services the tasks need beyond reward: name -> why, from the rows' tools and task types,
    or from the tool format alone when the rows are unknown."""
    needed = {}
    tool_format = config.rollout.tool_format
    if tool_format == "code_tags":
        needed["sandbox"] = "tool format code_tags runs python"
    if tool_format == "search_tags":
        needed["search"] = "tool format search_tags searches"
    if rows is None:
        if tool_format == "hermes":
            needed["sandbox"] = needed["search"] = "tool format hermes, tasks unknown"
        return needed
    if any("python" in r.tools for r in rows):
        needed.setdefault("sandbox", "tasks call the python tool")
    if any(r.task_type == "code" for r in rows):
        needed.setdefault("sandbox", "code tasks run unit tests in it")
    if any("search" in r.tools for r in rows):
        needed.setdefault("search", "tasks call the search tool")
    return needed


def skipped_services(config: Any, rows: list | None) -> list[CheckResult]:
    needed = uses_tools(config, rows)
    skipped = []
    for name, why in (("sandbox", "no task runs code"), ("search", "no task searches")):
        if name not in needed:
            skipped.append(CheckResult(name, getattr(config, name).target(), "skip", why))
    if not config.rollout.address:
        skipped.append(
            CheckResult(
                "rollout", "-", "skip", "rollout.address is not set (set it to check the workers)"
            )
        )
    return skipped


def service_checks(
    config: Any, rows: list | None, timeout_s: float, only: tuple[str, ...] | None = None
) -> list[Check]:
    """Redis, reward, the tool services the rows (else the tool format) use, rollout when
    rollout.address is set, every inference URL; with `only`, exactly those named."""
    redis_url = _hide_password(config.redis.url)
    checks = [
        Check(
            "redis",
            redis_url,
            partial(_redis_probe, config.redis.url, timeout_s),
            "start Redis there or set redis.url (env AGENTRL__REDIS__URL); locally "
            "`agentrl up -r RECIPE` starts one for the stack, or `redis-server --daemonize yes` "
            "runs the machine's (scripts/setup.sh does)",
            timeout_s,
        )
    ]
    needed = uses_tools(config, rows)
    names = [n for n in ("sandbox", "reward", "search") if n == "reward" or n in needed]
    if config.rollout.address:
        names.append("rollout")
    if only is not None:
        names = [n for n in ("sandbox", "reward", "search", "rollout") if n in only]
    for name in names:
        target = getattr(config, name).target()
        detail = f" ({needed[name]})" if name in needed else ""
        fix = (
            f"start the {name} service at {target} (locally `agentrl up -r RECIPE`; on "
            f"Kubernetes helm/agentrl or deploy/k8s) or set {name}.address "
            f"(env AGENTRL__{name.upper()}__ADDRESS)"
        )
        if name == "rollout":
            fix = (
                f"start rollout workers (`agentrl serve rollout -r RECIPE`) behind {target}, "
                "or unset rollout.address to skip this check"
            )
        checks.append(
            Check(name, target, _grpc_probe(name, target, timeout_s, detail), fix, timeout_s)
        )
    for url in config.inference.urls:
        checks.append(
            Check(
                "vllm",
                url,
                partial(_http_health_probe, url, timeout_s),
                "start it (locally `agentrl up -r RECIPE` serves the recipe's model there; "
                "elsewhere `vllm serve` with the flags of libs/common/inference/launcher.py) "
                "or fix inference.urls (env AGENTRL__INFERENCE__URLS)",
                timeout_s,
            )
        )
    if only is not None:
        return [c for c in checks if c.name in only]
    return checks


def preflight(
    config: Any,
    data_path: str | Path | None = None,
    *,
    services: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
    files: tuple[str, ...] = (),
    timeout_s: float = 5.0,
) -> list[CheckResult]:
    """The checks of a job about to start, at once; only the failed ones, each with its fix.
    Jobs call it first so that a service that is down is one paragraph, not a traceback minutes
    later. `files`: keys of FILE_KEYS to check (`model.path`, ...); `services`: the service
    checks to run (`redis`, `sandbox`, `reward`, `search`, `rollout`, `vllm`); None: every one
    the data at `data_path` (else the tool format) needs, as the dry run picks them; `skip`:
    services left out of that choice."""
    prompts: dict[str, list] = {}
    results = run_checks(file_checks(config, prompts, timeout_s * 6, files)) if files else []
    rows = prompts.get("data.train_path")
    if data_path is not None and Path(data_path).is_file():
        from agentrl.trainer.data import load_prompts

        try:
            rows = load_prompts(data_path)
        except ValueError:
            rows = None  # the data's own check (or the job) reports it; the tool format decides
    chosen = service_checks(config, rows, timeout_s, only=services)
    results += run_checks([c for c in chosen if c.name not in skip])
    return [result for result in results if result.status == "FAIL"]


# What each failed check's subject is called in a sentence.
SERVICE_CHECKS = ("redis", "sandbox", "reward", "search", "rollout", "vllm")


def describe_failures(failures: list[CheckResult], recipe: str | Path | None = None) -> str:
    """One paragraph: every service that is down or file that is missing, where, and what to do
    (`RECIPE` in a fix becomes `recipe` when given)."""
    parts = []
    for r in failures:
        fix = r.fix.replace("RECIPE", str(recipe)) if recipe else r.fix
        if r.check in SERVICE_CHECKS:
            parts.append(f"{r.check} at {r.target} does not answer ({r.detail}): {fix}.")
        else:
            parts.append(f"{r.check} ({r.target}) is not usable: {r.detail}; {fix}.")
    where = str(recipe) if recipe else "RECIPE"
    return " ".join(parts) + f" (`agentrl dry-run -r {where}` checks everything a recipe needs.)"


def _redis_probe(url: str, timeout_s: float) -> str:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise CheckFailed(
            f"authentication failed: {exc}",
            "put the password in redis.url, from a Secret on Kubernetes "
            "(helm value redis.existingSecret)",
        ) from None
    except redis.RedisError as exc:
        raise CheckFailed(f"no PONG: {exc}") from None
    finally:
        client.close()
    return "PONG"


def _grpc_probe(name: str, target: str, timeout_s: float, why: str) -> Callable[[], str]:
    def probe() -> str:
        import importlib

        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        module, service = GRPC_SERVICES[name]
        full_name = importlib.import_module(module).DESCRIPTOR.services_by_name[service].full_name
        with grpc.insecure_channel(target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=full_name), timeout=timeout_s
                )
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    raise CheckFailed(
                        f"answers, but does not serve {full_name}",
                        f"{target} runs another service; set {name}.address to "
                        f"the {name} service's",
                    ) from None
                listening = _who_listens(target, name)
                # gRPC's "failed to connect to all addresses; last error: ..." says no more.
                details = (exc.details() or "").rpartition("last error: ")[2]
                if listening == NOTHING_LISTENS:
                    raise CheckFailed(
                        f"{exc.code().name}: connection refused; {listening}"
                    ) from None
                raise CheckFailed(
                    f"{exc.code().name}: {details}; {listening}",
                    f"point {name}.address (or {name}.grpc_port; env "
                    f"AGENTRL__{name.upper()}__ADDRESS) at the {name} service's gRPC port "
                    "(`agentrl status -r RECIPE` lists the local stack's)",
                ) from None
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise CheckFailed(
                f"{full_name} is {status}",
                f"the {name} service is starting or draining; read its log",
            )
        return f"{full_name} SERVING{why}"

    return probe


NOTHING_LISTENS = "nothing listens there"


def _who_listens(target: str, name: str) -> str:
    """What is at a gRPC address that did not answer the health check: nothing (the service is
    not started, or it is another port) or a process that is not this service's gRPC server."""
    import socket

    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=1.0):
            pass
    except (OSError, ValueError):
        return NOTHING_LISTENS
    return (
        f"a process listens there but is not the {name} service's gRPC server: a wrong port "
        f"(the {name} service's HTTP port, or another program's)?"
    )


def _http_health_probe(url: str, timeout_s: float) -> str:
    import httpx

    try:
        response = httpx.get(url.rstrip("/") + "/health", timeout=timeout_s)
    except httpx.ConnectError as exc:
        reason = "connection refused" if "refused" in str(exc) else str(exc)
        raise CheckFailed(f"GET /health: ConnectError: {reason}; {NOTHING_LISTENS}") from None
    except httpx.HTTPError as exc:
        raise CheckFailed(f"GET /health: {type(exc).__name__}: {exc}") from None
    if response.status_code == 404:
        raise CheckFailed(
            "GET /health answered 404: a server listens there but it is not a vLLM server: "
            "a wrong port?",
            "point inference.urls (env AGENTRL__INFERENCE__URLS) at the vLLM server's URL "
            "(`agentrl status -r RECIPE` lists the local stack's)",
        )
    if response.status_code != 200:
        raise CheckFailed(
            f"GET /health answered {response.status_code}: the vLLM server is not healthy "
            "(starting, or its engine died: read its log)"
        )
    return "GET /health 200"


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def format_report(results: list[CheckResult]) -> str:
    """One aligned row per check; a failed check's fix on the line below it."""
    width_check = max(len("check"), *(len(r.check) for r in results))
    width_target = max(len("target"), *(len(r.target) for r in results))
    lines = [f"{'check':<{width_check}}  {'result':<6}  {'target':<{width_target}}  detail"]
    for r in results:
        lines.append(
            f"{r.check:<{width_check}}  {r.status:<6}  {r.target:<{width_target}}  {r.detail}"
        )
        if r.fix:
            lines.append(f"{'':<{width_check}}  {'':<6}  fix: {r.fix}")
    return "\n".join(lines)
