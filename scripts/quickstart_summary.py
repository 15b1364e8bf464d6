"""The quickstart's closing lines: held-out accuracy and tool use before and after RL, and where
a training step's time went. Reads the run directory only (eval/*.json, metrics.jsonl).

    python scripts/quickstart_summary.py runs/quickstart
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

# The quickstart's bar (issue 8): RL lifts held-out accuracy by this much over the SFT model.
GOAL_ACCURACY_GAIN = 0.30


def tool_calls_per_episode(report: dict) -> float:
    calls = [s["num_tool_calls"] for g in report.get("groups", []) for s in g["samples"]]
    return statistics.fmean(calls) if calls else 0.0


def main(run_dir: Path) -> int:
    evals = {
        name: json.loads((run_dir / "eval" / f"{name}.json").read_text())
        for name in ("before", "after")
        if (run_dir / "eval" / f"{name}.json").is_file()
    }
    if len(evals) < 2:
        print(
            f"no before/after evaluation in {run_dir / 'eval'}: was "
            "trainer.eval_samples_per_prompt 0?"
        )
        return 1
    before, after = evals["before"], evals["after"]
    k = before["k"]
    records = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    acc_before, acc_after = before["overall"]["avg_at_k"], after["overall"]["avg_at_k"]
    print(
        f"held-out accuracy (avg@{k}, {before['num_prompts']} prompts): "
        f"{acc_before:.3f} after SFT -> {acc_after:.3f} after {len(records)} RL steps "
        f"({acc_after - acc_before:+.3f})"
    )
    print(
        f"held-out pass@{k}: {before['overall']['pass_at_k']:.3f} -> "
        f"{after['overall']['pass_at_k']:.3f}"
    )
    print(
        f"tool calls per episode: {tool_calls_per_episode(before):.2f} -> "
        f"{tool_calls_per_episode(after):.2f}"
    )
    best_file = run_dir / "best" / "best.json"
    if best_file.is_file():
        best = json.loads(best_file.read_text())
        print(
            f"these figures are the last step's weights (eval/after.json); the best evaluated "
            f"weights, avg@{k} {best['eval_avg_at_k']:.3f} at step {best['step']}, are in "
            f"{run_dir / 'best'}"
        )
    warned = [r["step"] for r in records if r.get("collapse_warning")]
    if warned:
        print(f"collapse warnings at steps {warned} (metrics.jsonl: collapse_*)")
    errors = [report["overall"].get("num_tool_errors", 0) for report in (before, after)]
    if any(errors):  # a broken tool reads as low accuracy; say so
        print(
            f"tool calls that failed in the evaluations: {errors[0]} -> {errors[1]} "
            f"(samples: {run_dir / 'eval'}/*.json)"
        )
    if records:
        parts = {
            name: statistics.fmean(r[f"time_{name}_s"] or 0.0 for r in records)
            for name in ("waiting", "training", "weight_sync")
        }
        print(
            f"per step (mean of {len(records)}): {sum(parts.values()):.1f} s = waiting for "
            f"groups {parts['waiting']:.1f} s + training {parts['training']:.1f} s + weight "
            f"sync {parts['weight_sync']:.2f} s"
        )
    met = acc_after - acc_before >= GOAL_ACCURACY_GAIN
    print(f"goal (+{GOAL_ACCURACY_GAIN:.2f} accuracy over SFT): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/quickstart")))
