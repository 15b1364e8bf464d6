"""A run's Redis layout, defined once: every stream, consumer group and key of run `run_id`.

    agentrl:{run_id}:prompts          stream of RolloutTask      consumer group `rollout`
    agentrl:{run_id}:groups           stream of Group            consumer group `trainer`
    agentrl:{run_id}:policy_version   the latest published policy version (a string int)
    agentrl:{run_id}:events           pub/sub channel of PolicyVersionEvent

The trainer (admits prompts, consumes groups, publishes versions), the rollout workers (consume
prompts, publish groups, follow the version), the CLI (`agentrl streams status`) and the tests
all take names from `RunLayout(run_id)`; nothing else spells them. Delivery, idempotency and
trimming are streams.py's (docs/streams.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from agentrl.common.streams import stream_key

PROMPTS_GROUP = "rollout"
"""Consumer group of the prompts stream: every rollout worker is a consumer in it."""
GROUPS_GROUP = "trainer"
"""Consumer group of the groups stream: the trainer (one consumer per run)."""


@dataclass(frozen=True)
class RunLayout:
    run_id: str

    @property
    def prompts(self) -> str:
        return stream_key(self.run_id, "prompts")

    @property
    def groups(self) -> str:
        return stream_key(self.run_id, "groups")

    @property
    def policy_version(self) -> str:
        return stream_key(self.run_id, "policy_version")

    @property
    def events(self) -> str:
        return stream_key(self.run_id, "events")

    @property
    def trainer_consumer(self) -> str:
        """The trainer's consumer name: stable across restarts, so a resumed trainer gets its
        own pending (read, unacked) groups back in order."""
        return f"trainer-{self.run_id}"

    def streams(self) -> dict[str, tuple[str, str]]:
        """Stream name -> (key, consumer group), for status and clean-up."""
        return {"prompts": (self.prompts, PROMPTS_GROUP), "groups": (self.groups, GROUPS_GROUP)}
