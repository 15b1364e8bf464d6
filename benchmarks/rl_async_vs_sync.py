"""Asynchronous (staleness bound eta > 0) against synchronous (eta = 0) RL: wall-clock for the
same number of steps, from the same starting checkpoint, against the same running stack.

    agentrl up --recipe recipes/quickstart.yaml --services vllm,sandbox,reward,rollout
    # (after `make quickstart` made the SFT model)
    .venv/bin/python benchmarks/rl_async_vs_sync.py --recipe recipes/quickstart.yaml --steps 10

Runs alternate (sync, async, sync, async ... for --rounds), each a fresh run (own directory
under runs/bench-async/, the recipe's run_id, evaluation off), so the pool's load and the machine's noise
hit both modes alike. Prints seconds per step split into waiting / training / weight sync, the
accuracy reached, and the async/sync speed-up. AReaL reports 2.77x on 1.5B math with GPUs; on
2 shared CPU cores the trainer and vLLM compete for the same cores, which caps the overlap.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from agentrl.common.config import load_config
from agentrl.trainer.rl_loop import run_training


def one_run(recipe: Path, staleness: int, steps: int, index: int) -> dict[str, float]:
    config = load_config(recipe)
    # The stack's rollout worker serves the recipe's run_id: keep it, change the directory (a
    # directory without a checkpoint is a fresh run, which clears the run's streams first).
    out = Path("runs/bench-async") / f"eta{staleness}-{index}"
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
    started = time.perf_counter()
    result = run_training(config, steps)
    wall_s = time.perf_counter() - started
    records = result.metrics
    return {
        "wall_s": wall_s,
        "per_step_s": wall_s / steps,
        "waiting_s": statistics.fmean(r["time_waiting_s"] for r in records),
        "training_s": statistics.fmean(r["time_training_s"] for r in records),
        "sync_s": statistics.fmean(r["time_weight_sync_s"] for r in records),
        "final_accuracy": statistics.fmean(r["accuracy"] for r in records[-3:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/quickstart.yaml"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--staleness", type=int, default=1, help="eta of the async runs")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rows: dict[int, list[dict[str, float]]] = {0: [], args.staleness: []}
    for index in range(args.rounds):
        for staleness in (0, args.staleness):
            row = one_run(args.recipe, staleness, args.steps, index)
            rows[staleness].append(row)
            print(
                f"round {index} eta={staleness}: {row['wall_s']:.1f} s for {args.steps} steps "
                f"({row['per_step_s']:.1f} s/step = waiting {row['waiting_s']:.1f} + "
                f"training {row['training_s']:.1f} + sync {row['sync_s']:.2f}); accuracy "
                f"of the last 3 steps {row['final_accuracy']:.3f}",
                flush=True,
            )
    sync_s = statistics.fmean(r["wall_s"] for r in rows[0])
    async_s = statistics.fmean(r["wall_s"] for r in rows[args.staleness])
    print(
        f"eta=0: {sync_s:.1f} s, eta={args.staleness}: {async_s:.1f} s for {args.steps} steps; "
        f"speed-up {sync_s / async_s:.2f}x"
    )


if __name__ == "__main__":
    main()
