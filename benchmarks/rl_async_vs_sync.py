"""Asynchronous (staleness bound eta > 0) against synchronous (eta = 0) RL: wall-clock for the
same number of steps, from the same starting checkpoint, against the same running stack, and
where each step's time went.

    agentrl up --recipe recipes/quickstart.yaml --services vllm,sandbox,reward,rollout
    # (after `make quickstart` made the SFT model)
    .venv/bin/python benchmarks/rl_async_vs_sync.py --recipe recipes/quickstart.yaml --steps 10

Runs alternate (sync, async, sync, async ... for --rounds), each a fresh run (own directory
under runs/bench-async/, the recipe's run_id, evaluation off), so the pool's load and the
machine's noise hit both modes alike. A short untimed run goes first (`--warmup-steps`): the
first run in a process against a freshly started stack pays the imports, the first training
step's set-up and vLLM's first batches (tens of seconds on 2 shared cores), which would
otherwise all land on the first sync run. Per run it prints:
- the wall clock (model load and the first sync included, as the speed-up counts it) and the
  steady state: steps 2.. from one step record to the next, split into waiting / training /
  weight sync / drift check / other (the catch-up probe, the step's files, the checkpoint);
- overlap: how busy the trainer was (training + sync, share of the steady state), vLLM's mean
  number of requests running and the share of samples with none running (idle), its tokens
  per second, and the share of its tokens generated while the trainer trained (0 when nothing
  overlaps);
- CPU seconds per step of each service of the stack (its process group, children it reaped
  included: the sandbox's runs) and of this process (the trainer), against what the cores
  offer in that time;
- stale samples dropped and groups read per step (the price of running ahead).
`--per-step` adds one line per step. Last, the async/sync speed-up of the whole runs (each
round's pair, min / median / max, the ratio of the means) and of the steady state's s/step.

A sampler thread reads vLLM's /metrics and /proc every `--sample-interval-s` (the same for
both modes; each read costs vLLM a little CPU). The training window of a step is placed from
its record: it ends `time_weight_sync_s + time_drift_check_s` before the record's time.

AReaL reports 2.77x on 1.5B math with GPUs; on 2 shared CPU cores the trainer and vLLM compete
for the same cores, which caps the overlap.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import os
import shutil
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx

from agentrl.common.config import load_config
from agentrl.common.local_stack import read_state
from agentrl.trainer.rl_loop import run_training

# /proc/<pid>/stat's clock ticks per second (utime, stime, cutime, cstime).
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The stack's services whose CPU is read (the order they are printed in).
SERVICES = ("vllm", "rollout", "sandbox", "reward")


def group_pids(leader: int) -> list[int]:
    """Processes in the process group `leader` leads (the service and its children)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == leader:  # field 5 of stat, after pid, comm, state, ppid
            pids.append(int(name))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of `pids` and of the children they reaped (gone processes count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / CLOCK_TICKS


def vllm_gauges(client: httpx.Client, url: str) -> tuple[float, float]:
    """vLLM's requests running and generation tokens so far (summed over engines)."""
    running = tokens = 0.0
    for line in client.get(f"{url}/metrics").text.splitlines():
        if line.startswith("vllm:num_requests_running"):
            running += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:generation_tokens_total"):
            tokens += float(line.rsplit(" ", 1)[1])
    return running, tokens


@dataclass
class Sample:
    at_s: float  # time.time(), as the step records' time_unix_s
    running: float
    tokens: float
    cpu_s: dict[str, float]


@dataclass
class StackSampler:
    """Samples vLLM's load and every service's CPU in a thread while a run trains."""

    vllm_url: str
    leaders: dict[str, int]
    interval_s: float
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Group members are listed once per run: vLLM's engine and the reward service's
        # verifiers start with their service; short-lived children are reaped into cutime.
        self.pids = {name: group_pids(pid) for name, pid in self.leaders.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set():
                at_s = time.time()
                try:
                    running, tokens = vllm_gauges(client, self.vllm_url)
                except httpx.HTTPError:
                    running, tokens = float("nan"), float("nan")
                cpu = {name: cpu_seconds(pids) for name, pids in self.pids.items()}
                cpu["trainer"] = time.process_time()
                self.samples.append(Sample(at_s, running, tokens, cpu))
                self._stop.wait(self.interval_s)

    def at(self, t: float, value) -> float:
        """A counter (`value(sample)`) at time `t`, linear between the samples around it."""
        times = [s.at_s for s in self.samples]
        i = bisect.bisect_left(times, t)
        if i == 0:
            return value(self.samples[0])
        if i == len(times):
            return value(self.samples[-1])
        before, after = self.samples[i - 1], self.samples[i]
        share = (t - before.at_s) / max(after.at_s - before.at_s, 1e-9)
        return value(before) + share * (value(after) - value(before))

    def between(self, start: float, end: float, value) -> float:
        return self.at(end, value) - self.at(start, value)

    def running_in(self, start: float, end: float) -> list[float]:
        return [
            s.running for s in self.samples if start <= s.at_s <= end and s.running == s.running
        ]


def stack_leaders(config) -> dict[str, int]:
    state = read_state(config)
    if state is None:
        raise SystemExit(
            f"no stack is up for {config.run.output_dir}; start it first: agentrl up --recipe "
            "RECIPE --services vllm,sandbox,reward,rollout"
        )
    return {name: state.services[name].pid for name in SERVICES if name in state.services}


def step_breakdown(record: dict, previous: dict, sampler: StackSampler) -> dict[str, float]:
    """One step of the steady state: from the previous record's time to this one's."""
    start, end = previous["time_unix_s"], record["time_unix_s"]
    wall = end - start
    drift = record.get("time_drift_check_s", 0.0)
    train_end = end - record["time_weight_sync_s"] - drift
    train_start = train_end - record["time_training_s"]
    tokens = sampler.between(start, end, lambda s: s.tokens)
    running = sampler.running_in(start, end)
    row = {
        "wall_s": wall,
        "waiting_s": record["time_waiting_s"],
        "training_s": record["time_training_s"],
        "sync_s": record["time_weight_sync_s"],
        "drift_s": drift,
        "tokens": tokens,
        "tokens_in_training": sampler.between(train_start, train_end, lambda s: s.tokens),
        "running_mean": statistics.fmean(running) if running else float("nan"),
        "vllm_idle": (sum(r == 0 for r in running) / len(running)) if running else float("nan"),
        "stale": record.get("samples_dropped_stale", 0),
        "groups_read": record.get("groups_consumed", 0),
    }
    row["other_s"] = wall - row["waiting_s"] - row["training_s"] - row["sync_s"] - drift
    for name in (*SERVICES, "trainer"):
        if name in sampler.samples[0].cpu_s:
            row[f"cpu_{name}_s"] = sampler.between(start, end, lambda s, n=name: s.cpu_s[n])
    return row


def one_run(
    recipe: Path, staleness: int, steps: int, index: int, interval_s: float
) -> tuple[dict[str, float], list[dict[str, float]]]:
    config = load_config(recipe)
    leaders = stack_leaders(config)
    # The stack's rollout worker serves the recipe's run_id: keep it, change the directory (a
    # directory without a checkpoint is a fresh run, which clears the run's streams first).
    out = Path("runs/bench-async") / (f"eta{staleness}-{index}" if index >= 0 else "warmup")
    shutil.rmtree(out, ignore_errors=True)
    config = config.model_copy(
        update={
            "run": config.run.model_copy(update={"output_dir": out}),
            "trainer": config.trainer.model_copy(
                update={
                    "max_staleness": staleness,
                    "eval_samples_per_prompt": 0,
                    "checkpoint_interval_steps": steps,
                }
            ),
        }
    )
    with StackSampler(config.inference.urls[0], leaders, interval_s) as sampler:
        started = time.perf_counter()
        result = run_training(config, steps)
        wall_s = time.perf_counter() - started
    records = result.metrics
    rows = [step_breakdown(r, p, sampler) for p, r in itertools.pairwise(records)]
    summary = {
        "wall_s_total": wall_s,
        "final_accuracy": statistics.fmean(r["accuracy"] for r in records[-3:]),
    }
    for key in rows[0]:
        summary[key] = statistics.fmean(row[key] for row in rows)
    summary["tokens_in_training_share"] = sum(r["tokens_in_training"] for r in rows) / max(
        sum(r["tokens"] for r in rows), 1.0
    )
    summary["trainer_busy"] = (summary["training_s"] + summary["sync_s"]) / summary["wall_s"]
    return summary, rows


def describe(label: str, steps: int, row: dict[str, float]) -> str:
    cpu = {k[4:-2]: v for k, v in row.items() if k.startswith("cpu_")}
    return (
        f"{label}: {row['wall_s_total']:.1f} s for {steps} steps; steady state "
        f"{row['wall_s']:.2f} s/step = waiting {row['waiting_s']:.2f} + training "
        f"{row['training_s']:.2f} + sync {row['sync_s']:.2f} + drift {row['drift_s']:.2f} + "
        f"other {row['other_s']:.2f}\n"
        f"    overlap: trainer busy {row['trainer_busy']:.0%}; vLLM {row['running_mean']:.1f} "
        f"requests running on average, idle {row['vllm_idle']:.0%} of samples, "
        f"{row['tokens'] / row['wall_s']:.0f} tokens/s, {row['tokens_in_training_share']:.0%} "
        "of its tokens while the trainer trained\n"
        f"    CPU s/step: "
        + ", ".join(f"{name} {seconds:.2f}" for name, seconds in cpu.items())
        + f" (sum {sum(cpu.values()):.2f} of {os.cpu_count()} cores x {row['wall_s']:.2f} s)\n"
        f"    stale samples dropped {row['stale']:.1f}/step, groups read {row['groups_read']:.1f}"
        f"/step; accuracy of the last 3 steps {row['final_accuracy']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/quickstart.yaml"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--staleness", type=int, default=1, help="eta of the async runs")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--per-step", action="store_true", help="one line per step too")
    parser.add_argument(
        "--sample-interval-s", type=float, default=0.5, help="vLLM /metrics and CPU reads"
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=3, help="untimed sync run first (0: none)"
    )
    args = parser.parse_args()
    if args.steps < 3:
        raise SystemExit("--steps must be at least 3: the steady state starts at step 2")
    if args.warmup_steps:
        one_run(args.recipe, 0, max(args.warmup_steps, 2), -1, args.sample_interval_s)
    walls: dict[int, list[float]] = {0: [], args.staleness: []}
    steady: dict[int, list[float]] = {0: [], args.staleness: []}
    for index in range(args.rounds):
        for staleness in (0, args.staleness):
            row, rows = one_run(args.recipe, staleness, args.steps, index, args.sample_interval_s)
            walls[staleness].append(row["wall_s_total"])
            steady[staleness].append(row["wall_s"])
            print(describe(f"round {index} eta={staleness}", args.steps, row), flush=True)
            if args.per_step:
                for step, r in enumerate(rows, start=2):
                    print(
                        f"      step {step}: {r['wall_s']:.2f} s = wait {r['waiting_s']:.2f} "
                        f"train {r['training_s']:.2f} sync {r['sync_s']:.2f} other "
                        f"{r['other_s'] + r['drift_s']:.2f}; vLLM running "
                        f"{r['running_mean']:.1f}, {r['tokens']:.0f} tokens "
                        f"({r['tokens_in_training']:.0f} in training); stale {r['stale']}",
                        flush=True,
                    )
    for name, times, unit in (
        ("whole runs", walls, f"s for {args.steps} steps"),
        ("steady state", steady, "s/step"),
    ):
        pairs = [s / a for s, a in zip(times[0], times[args.staleness], strict=True)]
        sync_s, async_s = statistics.fmean(times[0]), statistics.fmean(times[args.staleness])
        print(
            f"{name}: eta=0 {sync_s:.2f}, eta={args.staleness} {async_s:.2f} {unit}; speed-up "
            f"{sync_s / async_s:.2f}x (per round "
            + ", ".join(f"{p:.2f}" for p in pairs)
            + f"; min / median / max {min(pairs):.2f} / {statistics.median(pairs):.2f} / "
            f"{max(pairs):.2f})"
        )


if __name__ == "__main__":
    main()
