"""What a training run leaves in its run directory besides metrics and checkpoints.

    <run dir>/config.json      the resolved config (every default filled in)
    <run dir>/samples.jsonl    a few trajectories per step, rendered for people (`agentrl report`)
    <run dir>/eval/NAME.json   evaluations during the run (before.json, after.json)

A sample line: {"step", "prompt_id", "prompt", "reward", "correct", "num_tool_calls",
"finish_reason", "segments": [{"role": "model" | "tool", "text"}]}. The segments are the
trajectory's own token ids cut where the loss mask changes (model tokens 1, tool output 0) and
decoded, so what a reader sees is exactly what the model saw and wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agentrl.common.config import AgentRLConfig

SAMPLES_FILE = "samples.jsonl"
CONFIG_FILE = "config.json"
# Per step: the first sample of the first group and the first correct one (if different), so
# the report shows how an answer looks and how a right one looks without growing the file much.
SAMPLES_PER_STEP = 2


def write_config(run_dir: Path, config: AgentRLConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(config.model_dump_json(indent=2) + "\n")


def trajectory_segments(trajectory: Any, tokenizer: Any) -> list[dict[str, str]]:
    """The response of a Trajectory proto as model/tool runs of decoded text."""
    ids = list(trajectory.token_ids)[trajectory.prompt_length :]
    mask = list(trajectory.loss_mask)[trajectory.prompt_length :]
    segments: list[dict[str, str]] = []
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or mask[end] != mask[start]:
            role = "model" if mask[start] else "tool"
            segments.append(
                {"role": role, "text": tokenizer.decode(ids[start:end], skip_special_tokens=True)}
            )
            start = end
    return segments


def sample_record(step: int, group: Any, scored: Any, tokenizer: Any) -> dict[str, Any]:
    from agentrl.proto.core.v1 import group_pb2, trajectory_pb2

    trajectory = scored.trajectory
    return {
        "step": step,
        "prompt_id": group.task.prompt_id,
        "prompt": group.task.prompt_text,
        "reward": scored.result.reward,
        "correct": scored.result.verdict == group_pb2.VERDICT_CORRECT,
        "num_tool_calls": trajectory.num_tool_calls,
        "finish_reason": trajectory_pb2.FinishReason.Name(trajectory.finish_reason)
        .removeprefix("FINISH_REASON_")
        .lower(),
        "segments": trajectory_segments(trajectory, tokenizer),
    }


def pick_samples(groups: list) -> list[tuple[Any, Any]]:
    """(group, scored sample) pairs to keep for a step (SAMPLES_PER_STEP at most)."""
    from agentrl.proto.core.v1 import group_pb2

    pairs = [(g, s) for g in groups for s in g.samples]
    if not pairs:
        return []
    chosen = [pairs[0]]
    correct = next((p for p in pairs if p[1].result.verdict == group_pb2.VERDICT_CORRECT), None)
    if correct is not None and correct is not pairs[0]:
        chosen.append(correct)
    return chosen[:SAMPLES_PER_STEP]


class SampleWriter:
    """Appends a step's example trajectories to `<run dir>/samples.jsonl`."""

    def __init__(self, run_dir: Path, tokenizer: Any) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / SAMPLES_FILE
        self.tokenizer = tokenizer

    def write(self, step: int, groups: list) -> None:
        with self.path.open("a") as out:
            for group, scored in pick_samples(groups):
                out.write(json.dumps(sample_record(step, group, scored, self.tokenizer)) + "\n")
