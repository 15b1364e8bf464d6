"""The run's Redis layout: the names every process agrees on, spelled once (run_layout.py)."""

from __future__ import annotations

from agentrl.common.run_layout import GROUPS_GROUP, PROMPTS_GROUP, RunLayout


def test_a_runs_keys_are_namespaced_by_run_id() -> None:
    layout = RunLayout("r1")
    assert (layout.prompts, layout.groups) == ("agentrl:r1:prompts", "agentrl:r1:groups")
    assert (layout.policy_version, layout.events) == (
        "agentrl:r1:policy_version",
        "agentrl:r1:events",
    )
    assert layout.trainer_consumer == "trainer-r1"
    assert layout.streams() == {
        "prompts": ("agentrl:r1:prompts", PROMPTS_GROUP),
        "groups": ("agentrl:r1:groups", GROUPS_GROUP),
    }
    assert (PROMPTS_GROUP, GROUPS_GROUP) == ("rollout", "trainer")
    assert RunLayout("r2").groups != layout.groups
