"""The shared schema: generated code is fresh, importable from one package, and round-trips."""

import re
from pathlib import Path

from agentrl.common import protogen
from agentrl.proto.core.v1 import group_pb2, task_pb2, trajectory_pb2


def test_generated_code_is_fresh():
    stale = protogen.stale_files()
    assert not stale, f"regenerate with `python -m agentrl.common.protogen`; stale: {stale}"


def test_staleness_is_detected(tmp_path: Path):
    protogen.generate(tmp_path)
    victim = tmp_path / "core" / "v1" / "task_pb2.py"
    victim.write_text(victim.read_text() + "\n# edited by hand\n")
    assert "core/v1/task_pb2.py" in protogen.stale_files(tmp_path)


def test_every_proto_is_generated_into_the_one_package():
    out = protogen.OUT_ROOT
    for proto in protogen.proto_files():
        area_version = proto.relative_to(protogen.PROTO_ROOT / "agentrl").parent
        module = out / area_version / f"{proto.stem}_pb2.py"
        assert module.is_file(), f"{proto} has no generated module"
        imports = re.findall(r"^from agentrl\.(\w+)", module.read_text(), re.MULTILINE)
        assert set(imports) <= {"proto"}, f"{module} imports outside agentrl.proto: {imports}"


def test_group_round_trips_with_per_token_fields():
    n = 5
    trajectory = trajectory_pb2.Trajectory(
        trajectory_id="t0",
        task_id="task",
        prompt_length=2,
        token_ids=list(range(n)),
        behaviour_logprobs=[0, 0, -0.5, 0, -1.25],
        loss_mask=[0, 0, 1, 0, 1],
        policy_versions=[-1, -1, 3, -1, 4],
        turns=[
            trajectory_pb2.Turn(
                index=0,
                response_start=2,
                response_end=3,
                observation_start=3,
                observation_end=4,
                tool_call=trajectory_pb2.ToolCall(
                    tool="python", arguments="1+1", status=trajectory_pb2.TOOL_CALL_STATUS_OK
                ),
            )
        ],
        finish_reason=trajectory_pb2.FINISH_REASON_ANSWER,
    )
    group = group_pb2.Group(
        group_id="g",
        idempotency_key="k",
        task=task_pb2.RolloutTask(task_id="task", num_samples=1, admitted_policy_version=3),
        samples=[
            group_pb2.ScoredTrajectory(
                trajectory=trajectory,
                result=group_pb2.RewardResult(
                    reward=1.0,
                    verdict=group_pb2.VERDICT_CORRECT,
                    components=group_pb2.RewardComponents(correctness=1.0),
                ),
            )
        ],
    )
    decoded = group_pb2.Group.FromString(group.SerializeToString())
    assert decoded == group
    sample = decoded.samples[0].trajectory
    assert list(sample.policy_versions) == [-1, -1, 3, -1, 4]
    assert len(sample.token_ids) == len(sample.loss_mask) == len(sample.behaviour_logprobs) == n
    assert sample.turns[0].tool_call.tool == "python"
