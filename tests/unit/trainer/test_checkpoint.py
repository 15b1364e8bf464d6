"""Checkpoint and resume: a restored run takes exactly the uninterrupted run's next step
(same prompts, bit-identical loss and weights on CPU); saves are atomic and pruned."""

from __future__ import annotations

import json
import random

import pytest
import torch

from agentrl.common.config import AlgorithmConfig
from agentrl.trainer.backends.interface import OptimizerSettings
from agentrl.trainer.backends.torch.backend import TorchBackend
from agentrl.trainer.checkpoint import CheckpointManager, TrainingState
from agentrl.trainer.data import EpochOrder, load_prompts
from agentrl.trainer.loss import GlobalTokenCounts, policy_loss_fn
from agentrl.trainer.packing import pack_micro_batches

PROMPTS_PER_STEP = 3
RESPONSE_TOKENS = 6  # stand-in "sampled" response per prompt, drawn from the torch RNG


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [
        {"prompt": f"What is {a} * {a + 7}?", "ground_truth": a * (a + 7), "task_type": "math"}
        for a in range(11, 18)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class MiniRun:
    """An RL-shaped loop over real parts: data order, backend, policy loss, RNG-drawn samples."""

    def __init__(self, model_path, prompts_file, seed: int = 5) -> None:
        settings = OptimizerSettings(
            learning_rate=1e-2, warmup_steps=2, schedule="cosine", total_steps=10
        )
        self.backend = TorchBackend(model_path, settings, device="cpu")
        self.order = EpochOrder(load_prompts(prompts_file), seed=seed)
        self.policy_version = 0

    def step(self) -> tuple[list[str], float]:
        batch = self.order.take(PROMPTS_PER_STEP)
        vocab = len(self.backend.tokenizer)
        token_ids, masks, advantages = [], [], []
        for row in batch:
            prompt = self.backend.tokenizer(row.prompt).input_ids
            response = torch.randint(0, vocab, (RESPONSE_TOKENS,)).tolist()
            token_ids.append(prompt + response)
            masks.append([0.0] * len(prompt) + [1.0] * RESPONSE_TOKENS)
            advantages.append([random.gauss(0.0, 1.0)] * len(token_ids[-1]))
        (row,) = pack_micro_batches(token_ids, 256)
        ((old, _),) = self.backend.logprobs([row])
        per_token = {
            "loss_mask": masks,
            "advantages": advantages,
            "old_logprobs": [
                old[0, row.seq_index[0] == row.sample_indices.index(i)].tolist()
                for i in range(len(token_ids))
            ],
        }
        micro_batches = pack_micro_batches(token_ids, 32, per_token)
        counts = sum(
            (GlobalTokenCounts.of(mb.per_token["loss_mask"], mb.seq_index) for mb in micro_batches),
            GlobalTokenCounts(0, 0, 0),
        )
        metrics, _ = self.backend.train_step(
            micro_batches, policy_loss_fn(AlgorithmConfig(), counts)
        )
        self.policy_version += 1
        return [r.prompt_id for r in batch], metrics["loss"]

    def training_state(self) -> TrainingState:
        return TrainingState(
            step=self.backend.step,
            policy_version=self.policy_version,
            data_position=self.order.state_dict(),
            stream_offsets={"groups": "1700000000000-3"},
        )

    def weights(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in self.backend.model.parameters()])


def test_resume_reproduces_the_next_step_exactly(tiny_checkpoint, prompts_file, tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    torch.manual_seed(0)
    random.seed(0)
    run = MiniRun(tiny_checkpoint, prompts_file)
    run.step()
    run.step()
    saved = manager.save(run.backend, run.training_state())
    expected_prompts, expected_loss = run.step()  # crosses into the data set's second epoch
    expected_weights = run.weights()

    torch.manual_seed(123)  # a fresh process would start from other RNG states
    random.seed(123)
    resumed = MiniRun(tiny_checkpoint, prompts_file)
    state = manager.load(resumed.backend)
    resumed.order.load_state_dict(state.data_position)
    resumed.policy_version = state.policy_version
    assert manager.latest() == saved
    assert (state.step, state.policy_version) == (2, 2)
    assert state.stream_offsets == {"groups": "1700000000000-3"}
    prompts, loss = resumed.step()
    assert prompts == expected_prompts
    assert loss == expected_loss  # bit-identical
    assert torch.equal(resumed.weights(), expected_weights)

    # The comparison can fail: without the RNG state the sampled responses differ, and
    # without the optimizer state (Adam moments, schedule step) the update differs.
    no_rng = MiniRun(tiny_checkpoint, prompts_file)
    no_rng.order.load_state_dict(manager.load(no_rng.backend, restore_rng=False).data_position)
    assert no_rng.step()[1] != expected_loss
    no_optimizer = MiniRun(tiny_checkpoint, prompts_file)
    no_optimizer.order.load_state_dict(manager.load(no_optimizer.backend).data_position)
    no_optimizer.backend.optimizer = torch.optim.AdamW(no_optimizer.backend.model.parameters())
    no_optimizer.backend.step = 0
    assert no_optimizer.step()[1] == expected_loss
    assert not torch.equal(no_optimizer.weights(), expected_weights)


class FlakyBackend:
    """Stands in for a backend whose state takes a while to write; can fail mid-save."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def state_dict(self):
        if self.fail:
            return {"unpicklable": lambda: None}  # torch.save raises after creating the file
        return {"weights": torch.arange(4.0)}

    def is_main_process(self) -> bool:
        return True


def test_saves_are_atomic_and_only_the_last_k_are_kept(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        manager.save(FlakyBackend(), TrainingState(step=step, policy_version=step))
    assert [p.name for p in manager.checkpoints()] == ["step_00000002", "step_00000003"]
    with pytest.raises((AttributeError, TypeError, RuntimeError)):  # pickling a lambda
        manager.save(FlakyBackend(fail=True), TrainingState(step=4, policy_version=4))
    assert manager.latest().name == "step_00000003"  # the failed save is not a checkpoint
    assert any(p.name.startswith(".partial-") for p in tmp_path.iterdir())
    manager.save(FlakyBackend(), TrainingState(step=3, policy_version=9))  # same step again
    assert json.loads((manager.latest() / "training_state.json").read_text())["policy_version"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002", "step_00000003"]
    with pytest.raises(ValueError, match="no checkpoint under"):
        CheckpointManager(tmp_path / "empty").load(FlakyBackend())
