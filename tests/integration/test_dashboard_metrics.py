"""Every series the Grafana dashboards query is exported by a running stack.

The real local stack (`agentrl up`: Redis, CPU vLLM with a tiny model, sandbox, reward, search
over a small BM25 index, a rollout worker) and `agentrl train` run until the trainer has
written two steps; the sandbox and search each answer one HTTP call. Then every service's
/metrics (no token needed) is scraped, and:
- every `agentrl_*` metric a dashboard query names is a family some service exports (`# TYPE`
  line; a histogram's `_bucket`/`_sum`/`_count` through its base name), and where it has
  samples, each carries the labels the query groups by;
- every `vllm:` series a query names is in the vLLM server's exposition under that exact name;
- the rollout and trainer panels have data: each trainer query's `metric` selector matches a
  series the running trainer exports, and the rollout has counted episodes and tokens.

The metric names are also checked against the code that defines them, without a stack, in
tests/unit/deploy/test_grafana.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from dashboards import dashboard_queries
from prometheus_client.parser import text_string_to_metric_families

from agentrl.common.inference.launcher import free_port
from agentrl.common.models import default_corpus, init_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
REPO = Path(__file__).resolve().parents[2]
AGENTRL = [sys.executable, "-m", "agentrl.common.cli"]
SERVICES = ("sandbox", "reward", "search", "rollout", "trainer")
# A loaded 2-core machine: vLLM starts in 30-90 s, a step of the tiny model takes seconds.
STEP_DEADLINE_S = 600.0
# Step 2 or later: every gauge of step 1 is set by then (a step's index is set before its values).
SECOND_STEP = re.compile(r"^agentrl_trainer_step_index ([2-9]|\d\d)", re.MULTILINE)


def write_inputs(root: Path) -> Path:
    """Recipe, prompts, search corpus and index of a tiny run; returns the recipe."""
    ports = iter(free_port() for _ in range(13))
    data = root / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {"prompt": f"What is {a} + {b}?", "ground_truth": str(a + b), "task_type": "math"}
            )
            + "\n"
            for a, b in ((i % 9 + 1, i // 9 + 2) for i in range(32))
        )
    )
    corpus = root / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": str(i), "title": f"number {i}", "text": f"{i} plus one is {i + 1}"})
            + "\n"
            for i in range(50)
        )
    )
    index = root / "index"
    subprocess.run(
        [*AGENTRL, "search", "index", str(corpus), "--out", str(index)],
        cwd=REPO,
        capture_output=True,
        timeout=300,
        check=True,
    )
    model_dir = init_tiny_model(root / "model", default_corpus(200), seed=1)
    config = {
        "run": {"run_id": f"dash-{os.getpid()}", "output_dir": str(root / "run"), "seed": 0},
        "model": {"path": str(model_dir)},
        "data": {"train_path": str(data)},
        # A port nothing answers on: `agentrl up` starts a private redis-server there.
        "redis": {"url": f"redis://127.0.0.1:{next(ports)}/0", "visibility_timeout_s": 10},
        "sandbox": {"grpc_port": next(ports), "http_port": next(ports), "max_concurrency": 2},
        "reward": {"grpc_port": next(ports), "http_port": next(ports), "num_verifier_workers": 1},
        "search": {
            "grpc_port": next(ports),
            "http_port": next(ports),
            "index_dir": str(index),
            "search_threads": 1,
        },
        "inference": {
            "urls": [f"http://127.0.0.1:{next(ports)}"],
            "server": {"max_model_len": 256, "max_num_seqs": 16, "kv_cache_gib": 1},
        },
        "rollout": {
            "grpc_port": next(ports),
            "http_port": next(ports),
            "max_concurrent_episodes": 8,
            "shutdown_grace_s": 5,
            "max_turns": 1,
            "max_response_tokens": 16,
        },
        "trainer": {
            "batch_size": 2,
            "max_staleness": 1,
            "device": "cpu",
            "micro_batch_tokens": 512,
            # More than it will reach: the trainer must still serve /metrics when scraped.
            "total_steps": 1000,
            "checkpoint_interval_steps": 1000,
            "grpc_port": next(ports),
            "http_port": next(ports),
        },
        # kl_coef > 0: the reference policy runs, so the KL panel has its kl_k* series.
        "algorithm": {
            "group_size": 4,
            "learning_rate": 1e-3,
            "dynamic_sampling": False,
            "kl_coef": 0.01,
        },
    }
    path = root / "dashboard.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Scrape:
    """What each running process exported, by process name ("vllm", "trainer", ...)."""

    expositions: dict[str, str]

    def families(self) -> dict[str, list]:
        """Metric family name -> its samples, over every AgentRL process."""
        found: dict[str, list] = {}
        for name, text in self.expositions.items():
            if name == "vllm":
                continue
            for family in text_string_to_metric_families(text):
                # The parser drops a counter's `_total` from the family name.
                base = family.name + ("_total" if family.type == "counter" else "")
                found.setdefault(base, []).extend(family.samples)
        return found


def cli(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*AGENTRL, *args, "--recipe", str(recipe)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def get_metrics(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text


def wait_for_a_step(trainer: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + STEP_DEADLINE_S
    while True:
        assert trainer.poll() is None, log.read_text(errors="replace")[-4000:]
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
        try:
            if SECOND_STEP.search(get_metrics(port)):
                return
        except httpx.HTTPError:
            pass  # not serving yet
        time.sleep(1.0)


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrape]:
    root = tmp_path_factory.mktemp("dashboard")
    recipe = write_inputs(root)
    config = yaml.safe_load(recipe.read_text())
    up = cli(recipe, "up", "--services", "vllm,sandbox,reward,search,rollout")
    trainer = None
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        log = root / "trainer.log"
        with log.open("ab") as out:
            trainer = subprocess.Popen(
                [*AGENTRL, "train", "--recipe", str(recipe)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_a_step(trainer, config["trainer"]["http_port"], log)
        # One call each, so their labelled series have samples to check.
        sandbox = f"http://127.0.0.1:{config['sandbox']['http_port']}/run_code"
        reply = httpx.post(sandbox, json={"code": "print(1)", "language": "python"}, timeout=60)
        assert reply.status_code == 200, reply.text
        search = f"http://127.0.0.1:{config['search']['http_port']}/retrieve"
        reply = httpx.post(search, json={"queries": ["plus one"], "topk": 1}, timeout=60)
        assert reply.status_code == 200, reply.text
        expositions = {name: get_metrics(config[name]["http_port"]) for name in SERVICES}
        expositions["vllm"] = httpx.get(f"{config['inference']['urls'][0]}/metrics").text
        yield Scrape(expositions)
    finally:
        if trainer is not None and trainer.poll() is None:
            os.killpg(trainer.pid, signal.SIGTERM)
            try:
                trainer.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(trainer.pid, signal.SIGKILL)
                trainer.wait(30)
        down = cli(recipe, "down")
        assert down.returncode == 0, down.stdout + down.stderr


def grouped_labels(expr: str, name: str) -> set[str]:
    """Labels a query groups `name` by: `sum by (a, b) (... name ...)`, `le` excepted."""
    labels: set[str] = set()
    for match in re.finditer(r"by \(([a-z_, ]+)\)\s*\(", expr):
        if name in expr[match.end() :]:
            labels |= {label.strip() for label in match.group(1).split(",")}
    return labels - {"le", "instance"}


def test_every_agentrl_metric_of_the_dashboards_is_exported_with_its_labels(scrape):
    families = scrape.families()
    queries = dashboard_queries()
    assert queries, "no dashboard queries found"
    for title, expr in queries:
        for name in re.findall(r"\bagentrl_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            family = name if name in families else base
            assert family in families, f"{title}: {name} is exported by no running service"
            samples = [s for s in families[family] if s.name == name] or families[family]
            for label in grouped_labels(expr, name):
                assert all(label in s.labels for s in samples), (title, name, label)


def test_every_vllm_series_of_the_dashboards_is_exported_by_the_pool(scrape):
    wanted = {n for _t, expr in dashboard_queries() for n in re.findall(r"\bvllm:[a-z_]+", expr)}
    assert wanted, "the dashboards have vLLM panels"
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in scrape.expositions["vllm"].splitlines()
        if line.startswith("vllm:")
    }
    missing = sorted(wanted - exported)
    assert not missing, f"queried by a dashboard, not exported by vLLM: {missing}"


def test_the_trainer_panels_have_series_to_show(scrape):
    step_metrics = {
        sample.labels["metric"]
        for family in text_string_to_metric_families(scrape.expositions["trainer"])
        for sample in family.samples
        if sample.name == "agentrl_trainer_step_metric_value"
    }
    for title, expr in dashboard_queries():
        for operator, pattern in re.findall(r'metric(=~|=)"([^"]+)"', expr):
            if "!~" in expr:
                continue  # the breakdown panel's "everything else", checked by its neighbour
            regex = re.compile(pattern if operator == "=~" else re.escape(pattern))
            matched = {m for m in step_metrics if regex.fullmatch(m)}
            assert matched, f"{title}: no trainer series matches metric{operator}{pattern!r}"


def test_the_rollout_panels_have_counted_the_run(scrape):
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scrape.expositions["rollout"])
        for sample in family.samples
    }
    tokens = sum(
        v for (n, _l), v in samples.items() if n == "agentrl_rollout_generated_tokens_total"
    )
    episodes = sum(v for (n, _l), v in samples.items() if n == "agentrl_rollout_episodes_total")
    assert tokens > 0 and episodes > 0, (tokens, episodes)
