"""The quickstart's RL phase over N seeds from one SFT checkpoint: does every run meet the goal?

    make quickstart                              # once: data, the SFT model (runs/quickstart/sft)
    .venv/bin/python benchmarks/quickstart_seeds.py --seeds 5 --cpu-hog --up
    make quickstart-search                       # the search quickstart, the same way
    .venv/bin/python benchmarks/quickstart_seeds.py --recipe recipes/quickstart_search.yaml \
        --seeds 3 --cpu-hog --up --out runs/quickstart-search-seeds

Each seed is a fresh `run_training` of the recipe (`run.seed` = the seed, its own directory
`<out>/seed_<n>/`, the recipe's run_id, which the stack's rollout worker serves): the pool is
reset to the SFT weights, the held-out set evaluated (avg@k, pass@k), the recipe's steps
trained, the set evaluated again. Seeds run one after another against the same stack
(`--up` starts it with `agentrl up` and takes it down at the end; without, it must be up; the
services are the recipe's tool's: the search service for `tool_format: search_tags`, else the
sandbox).
`--cpu-hog` keeps two busy processes (a pure-Python spin loop each) running beside the whole
measurement, as a user's busy machine would: the asynchronous timing, and with it the outcome,
changes under load (issue #17).

Per seed it prints held-out avg@k and pass@k before -> after, tool calls per episode after,
collapse warnings (steps whose record has `collapse_warning`), the best evaluated step
(`best/`), whether the goal was met (+0.30 avg@k over SFT, the quickstart's bar) and pass@k did
not fall, the wall time and the machine's load average over it; then the median and range
(min-max) of each over the seeds, and writes everything to `<out>/seeds.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Self

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from quickstart_summary import GOAL_ACCURACY_GAIN, tool_calls_per_episode

from agentrl.common.config import AgentRLConfig, load_config

AGENTRL = [sys.executable, "-m", "agentrl.common.cli"]
# One busy process per core of the quickstart's 2-core machine: a user's machine is busy too.
NUM_HOG_PROCESSES = 2
HOG_PROGRAM = "while True:\n    pass\n"


def stack_services(config: AgentRLConfig) -> str:
    """The services `--up` starts: the quickstart's stack, with the tool service its recipe uses."""
    tool = "search" if config.rollout.tool_format == "search_tags" else "sandbox"
    return f"vllm,{tool},reward,rollout"


def seed_config(config: AgentRLConfig, seed: int, out: Path, steps: int | None) -> AgentRLConfig:
    """The recipe for one seed: its own run directory and seed, the same run_id and model."""
    run_dir = out / f"seed_{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resume
    trainer = config.trainer.model_copy(update={"total_steps": steps or config.trainer.total_steps})
    return config.model_copy(
        update={
            "run": config.run.model_copy(update={"seed": seed, "output_dir": run_dir}),
            "trainer": trainer,
        }
    )


def seed_row(
    seed: int, run_dir: Path, wall_s: float, load_avg: float | None = None
) -> dict[str, Any]:
    """The figures of one finished seed, from its run directory; `load_avg` is the machine's
    load average over the seed (the 1-minute figure sampled through it, averaged)."""
    before = json.loads((run_dir / "eval" / "before.json").read_text())
    after = json.loads((run_dir / "eval" / "after.json").read_text())
    records = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    best_file = run_dir / "best" / "best.json"
    best = json.loads(best_file.read_text()) if best_file.is_file() else {}
    avg = (before["overall"]["avg_at_k"], after["overall"]["avg_at_k"])
    passes = (before["overall"]["pass_at_k"], after["overall"]["pass_at_k"])
    warnings = [r["step"] for r in records if r.get("collapse_warning")]
    return {
        "seed": seed,
        "k": after["k"],
        "avg_at_k_before": avg[0],
        "avg_at_k_after": avg[1],
        "avg_at_k_gain": avg[1] - avg[0],
        "pass_at_k_before": passes[0],
        "pass_at_k_after": passes[1],
        "tool_calls_before": tool_calls_per_episode(before),
        "tool_calls_after": tool_calls_per_episode(after),
        "collapse_warning_steps": warnings,
        "best_step": best.get("step"),
        "best_avg_at_k": best.get("eval_avg_at_k"),
        "goal_met": avg[1] - avg[0] >= GOAL_ACCURACY_GAIN,
        "pass_at_k_held": passes[1] >= passes[0],
        "steps": len(records),
        "wall_s": wall_s,
        "load_avg": load_avg,
    }


def describe_row(row: dict[str, Any]) -> str:
    k = row["k"]
    warned = row["collapse_warning_steps"]
    return (
        f"seed {row['seed']}: avg@{k} {row['avg_at_k_before']:.3f} -> "
        f"{row['avg_at_k_after']:.3f} ({row['avg_at_k_gain']:+.3f}, goal "
        f"{'met' if row['goal_met'] else 'NOT met'})  pass@{k} {row['pass_at_k_before']:.3f} -> "
        f"{row['pass_at_k_after']:.3f}{'' if row['pass_at_k_held'] else ' (FELL)'}  "
        f"tools/ep {row['tool_calls_before']:.2f} -> {row['tool_calls_after']:.2f}  "
        f"collapse warnings {len(warned)}{f' at {warned}' if warned else ''}  "
        f"best step {row['best_step']}  {row['wall_s']:.0f} s"
        + (f"  load {row['load_avg']:.1f}" if row.get("load_avg") is not None else "")
    )


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range of each figure over the seeds, and how many met each bar."""
    figures = {}
    for name in (
        "avg_at_k_after",
        "avg_at_k_gain",
        "pass_at_k_after",
        "tool_calls_after",
        "wall_s",
        "load_avg",
    ):
        values = [row[name] for row in rows if row.get(name) is not None]
        if not values:
            continue
        figures[name] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
    return {
        "num_seeds": len(rows),
        "figures": figures,
        "goal_met": sum(row["goal_met"] for row in rows),
        "pass_at_k_held": sum(row["pass_at_k_held"] for row in rows),
        "without_collapse_warning": sum(not row["collapse_warning_steps"] for row in rows),
    }


def describe_summary(result: dict[str, Any], k: int) -> list[str]:
    lines = []
    labels = {
        "avg_at_k_after": f"held-out avg@{k} after",
        "avg_at_k_gain": f"avg@{k} gain over SFT",
        "pass_at_k_after": f"held-out pass@{k} after",
        "tool_calls_after": "tool calls per episode after",
        "wall_s": "wall time per seed (s)",
        "load_avg": "load average (1 min) per seed",
    }
    for name, label in labels.items():
        if name not in result["figures"]:
            continue
        f = result["figures"][name]
        lines.append(f"{label}: median {f['median']:.3f}, range {f['min']:.3f}-{f['max']:.3f}")
    n = result["num_seeds"]
    lines.append(
        f"goal (+{GOAL_ACCURACY_GAIN:.2f}) met by {result['goal_met']}/{n} seeds; pass@{k} "
        f"not lower in {result['pass_at_k_held']}/{n}; no collapse warning in "
        f"{result['without_collapse_warning']}/{n}"
    )
    return lines


class LoadSampler:
    """The 1-minute load average sampled every `interval_s` while a seed runs (a thread: the
    seed's own processes are the measurement, a sampler process would add to the load)."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.done.wait(self.interval_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> Self:
        self.samples.append(os.getloadavg()[0])
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    def mean(self) -> float:
        return statistics.fmean(self.samples)


def start_hogs() -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", HOG_PROGRAM]) for _ in range(NUM_HOG_PROCESSES)]


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/quickstart.yaml"))
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="default: trainer.total_steps")
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart-seeds"))
    parser.add_argument("--cpu-hog", action="store_true", help="two busy processes beside it")
    parser.add_argument("--up", action="store_true", help="start the stack, take it down after")
    args = parser.parse_args()

    config = load_config(args.recipe)
    model = config.model.path if config.model else None
    if model is None or not (Path(model) / "config.json").is_file():
        print(
            f"no SFT checkpoint at {model} (model.path of {args.recipe}): run `make quickstart` "
            "(or its data, model and `agentrl sft` steps) first",
            file=sys.stderr,
        )
        return 2
    if not (config.trainer.eval_samples_per_prompt and config.data.eval_path):
        print(
            "the recipe evaluates nothing: set trainer.eval_samples_per_prompt and data.eval_path"
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    hogs = start_hogs() if args.cpu_hog else []
    if args.up:
        subprocess.run(
            [*AGENTRL, "up", "--recipe", str(args.recipe), "--services", stack_services(config)],
            check=True,
        )
    from agentrl.trainer.rl_loop import run_training

    rows = []
    try:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            seeded = seed_config(config, seed, args.out, args.steps)
            started = time.perf_counter()
            with LoadSampler() as load:
                run_training(seeded)
            wall_s = time.perf_counter() - started
            row = seed_row(seed, Path(seeded.run.output_dir), wall_s, load.mean())
            rows.append(row)
            print(describe_row(row), flush=True)
    finally:
        if args.up:
            subprocess.run([*AGENTRL, "down", "--recipe", str(args.recipe)], check=False)
        stop(hogs)
    result = summary(rows)
    for line in describe_summary(result, rows[0]["k"]):
        print(line)
    record = {
        "recipe": str(args.recipe),
        "model": str(model),
        "cpu_hog": args.cpu_hog,
        "rows": rows,
        "summary": result,
    }
    (args.out / "seeds.json").write_text(json.dumps(record, indent=2))
    print(f"written: {args.out / 'seeds.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
