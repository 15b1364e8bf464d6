"""The trainer process: `agentrl serve trainer` (and `agentrl train`) land here.

Thin on purpose (STYLE.md): the config is already parsed; heavy imports (torch, transformers,
vLLM's client) happen inside `run_training`, which owns the loop (rl_loop.py).
"""

from __future__ import annotations

from agentrl.common.config import AgentRLConfig
from agentrl.common.logging import get_logger

log = get_logger(__name__)


def main(config: AgentRLConfig) -> None:
    """Train the recipe's policy for `trainer.total_steps` steps against the running stack."""
    from agentrl.trainer.rl_loop import run_training

    def show(record: dict) -> None:
        log.info("step %d  reward %.3f  accuracy %.3f  kept %.2f  entropy %.3f  grad_norm %.3f  "
                 "wait %.1f s  train %.1f s  sync %.2f s", record["step"], record["reward_mean"],
                 record["accuracy"], record["kept_group_ratio"], record.get("entropy", 0.0),
                 record["grad_norm"], record["time_waiting_s"], record["time_training_s"],
                 record["time_weight_sync_s"])

    result = run_training(config, on_step=show)
    log.info("training done: %d steps, policy version %d, run directory %s", result.steps,
             result.policy_version, result.run_dir)
