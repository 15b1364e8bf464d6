"""The Megatron backend on CPU (gloo, one process): megatron-core's GPTModel gives the Hugging
Face model's logits on a packed micro-batch (Qwen3, Qwen2, Llama), one RL step equals the torch
backend's (loss, metrics, grad norm, new weights), and weights and checkpoints come back out in
Hugging Face naming. Multi-rank (TP 2) runs are in test_megatron_ranks.py."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("megatron.core", reason="megatron-core is not installed")

from agentrl.common.config import AlgorithmConfig
from agentrl.proto.core.v1 import group_pb2, task_pb2, trajectory_pb2
from agentrl.trainer.backends.interface import OptimizerSettings
from agentrl.trainer.backends.megatron.convert import (
    ModelShape,
    ParallelLayout,
    hf_to_megatron,
)
from agentrl.trainer.packing import pack_micro_batches, token_logprobs_and_entropy
from agentrl.trainer.rl_step import train_step
from agentrl.trainer.train_batch import build_train_batch

pytestmark = pytest.mark.slow  # megatron-core's import and model builds: ~10 s in all


@pytest.fixture(scope="module", autouse=True)
def megatron_process_group():
    """A one-process gloo group for megatron-core, torn down after the module."""
    yield
    import torch.distributed as dist
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def random_hf_model(family: str, tied: bool):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    sizes = {
        "vocab_size": 150,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "tie_word_embeddings": tied,
    }
    config = {
        "qwen3": lambda: Qwen3Config(**sizes, head_dim=24),
        "qwen2": lambda: Qwen2Config(**sizes),
        "llama": lambda: LlamaConfig(**sizes, rope_theta=500000.0),
    }[family]()
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # norms and biases off their all-ones / all-zeros init
        for name, parameter in model.named_parameters():
            if "norm" in name or "bias" in name:
                parameter.normal_(1.0 if "norm" in name else 0.0, 0.2)
    return model.eval()


@pytest.mark.parametrize(("family", "tied"), [("qwen3", False), ("qwen2", True), ("llama", False)])
def test_logits_equal_hugging_faces_on_a_packed_micro_batch(family, tied):
    from agentrl.trainer.backends.megatron import model as megatron_model

    hf = random_hf_model(family, tied)
    layout = ParallelLayout(tp=1, pp=1)
    megatron_model.init_parallel(layout)
    gpt = megatron_model.build_gpt_model(hf.config, layout)
    shards = hf_to_megatron(hf.state_dict(), ModelShape.from_hf(hf.config), layout)
    gpt.load_state_dict(shards[(0, 0)], strict=False)
    gpt.eval()
    lengths = [9, 17, 5]
    generator = torch.Generator().manual_seed(1)
    sequences = [torch.randint(0, 150, (n,), generator=generator).tolist() for n in lengths]
    (row,) = pack_micro_batches(sequences, sum(lengths))
    rope = megatron_model.Rope.from_hf(hf.config)
    with torch.no_grad():
        logits = megatron_model.forward_stage(
            gpt, rope, row.input_ids, row.position_ids, row.cu_seqlens
        )[:, 0, :150]
        start = 0
        for index in row.sample_indices:  # each sequence alone through Hugging Face
            n = lengths[index]
            expected = hf(torch.tensor([sequences[index]])).logits[0]
            torch.testing.assert_close(logits[start : start + n], expected, atol=1e-4, rtol=1e-4)
            start += n


def make_groups(num_groups: int = 3, prompt_length: int = 3) -> list[group_pb2.Group]:
    """Hand-made groups: 4 samples of different lengths, rewards 1/0, behaviour log-probs."""
    generator = torch.Generator().manual_seed(0)
    groups = []
    for g in range(num_groups):
        samples = []
        for i, reward in enumerate([1.0, 0.0, 0.0, 1.0]):
            length = prompt_length + 6 + g + i
            behaviour = (
                -1.0 - 4 * torch.rand(length - prompt_length, generator=generator)
            ).tolist()
            samples.append(
                group_pb2.ScoredTrajectory(
                    trajectory=trajectory_pb2.Trajectory(
                        trajectory_id=f"g{g}-{i}",
                        sample_index=i,
                        prompt_length=prompt_length,
                        token_ids=torch.randint(3, 300, (length,), generator=generator).tolist(),
                        loss_mask=[0] * prompt_length + [1] * (length - prompt_length),
                        behaviour_logprobs=[0.0] * prompt_length + behaviour,
                        policy_versions=[-1] * prompt_length + [0] * (length - prompt_length),
                    ),
                    result=group_pb2.RewardResult(reward=reward),
                )
            )
        task = task_pb2.RolloutTask(task_id=f"g{g}", admitted_policy_version=0)
        groups.append(
            group_pb2.Group(group_id=f"g{g}", idempotency_key=f"g{g}", task=task, samples=samples)
        )
    return groups


def test_one_rl_step_equals_the_torch_backends(tiny_checkpoint):
    """The same TrainBatch through rl_step.train_step (the shared policy_loss_fn) on both
    backends: the same loss and metrics, grad norm and updated weights (float32)."""
    from agentrl.trainer.backends.megatron.backend import MegatronBackend
    from agentrl.trainer.backends.torch.backend import TorchBackend

    settings = OptimizerSettings(learning_rate=1e-2, max_grad_norm=0.1)
    algorithm = AlgorithmConfig(learning_rate=1e-2, entropy_coef=0.01)
    batch = build_train_batch(make_groups(), policy_version=0, algorithm=algorithm, max_staleness=4)
    torch_backend = TorchBackend(tiny_checkpoint, settings, device="cpu")
    megatron = MegatronBackend(tiny_checkpoint, settings, layout=ParallelLayout(tp=1, pp=1))

    micro_batches = batch.micro_batches(40)
    for (lp_t, ent_t), (lp_m, ent_m) in zip(
        torch_backend.logprobs(micro_batches), megatron.logprobs(micro_batches), strict=True
    ):
        torch.testing.assert_close(lp_m, lp_t, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(ent_m, ent_t, atol=2e-5, rtol=1e-5)

    expected = train_step(torch_backend, batch, algorithm, micro_batch_tokens=40)
    outcome = train_step(megatron, batch, algorithm, micro_batch_tokens=40)
    assert outcome.num_micro_batches == expected.num_micro_batches > 1
    assert outcome.counts == expected.counts
    for name, value in expected.loss_metrics.items():
        assert outcome.loss_metrics[name] == pytest.approx(value, abs=2e-6), name
    assert outcome.stats.grad_norm == pytest.approx(expected.stats.grad_norm, rel=1e-4)
    assert outcome.stats.grad_norm > settings.max_grad_norm  # the clip acted on both
    # Adam's first update is lr·g/(|g| + eps) per element: an element whose gradient is ~eps
    # may move anywhere in [0, lr] on either side, so weights agree to 1% of lr (the
    # gradients themselves are compared exactly below).
    trained = megatron.hf_weights()
    for name, tensor in torch_backend.model.state_dict().items():
        torch.testing.assert_close(trained[name], tensor, atol=1e-4, rtol=0)


def test_gradients_equal_the_torch_backends(tiny_checkpoint):
    from agentrl.trainer.backends.megatron.backend import MegatronBackend
    from agentrl.trainer.backends.megatron.convert import megatron_to_hf
    from agentrl.trainer.backends.torch.backend import TorchBackend
    from agentrl.trainer.loss import GlobalTokenCounts, policy_loss_fn

    settings = OptimizerSettings(learning_rate=1e-2)
    algorithm = AlgorithmConfig(learning_rate=1e-2)
    batch = build_train_batch(make_groups(), policy_version=0, algorithm=algorithm, max_staleness=4)
    micro_batches = batch.micro_batches(40)
    for micro_batch in micro_batches:
        micro_batch.per_token["old_logprobs"] = micro_batch.per_token["behaviour_logprobs"]
    counts = sum(
        (GlobalTokenCounts.of(mb.per_token["loss_mask"], mb.seq_index) for mb in micro_batches),
        GlobalTokenCounts(0, 0, 0),
    )
    torch_backend = TorchBackend(tiny_checkpoint, settings, device="cpu")
    megatron = MegatronBackend(tiny_checkpoint, settings, layout=ParallelLayout(tp=1, pp=1))
    for backend in (torch_backend, megatron):
        backend.forward_backward(micro_batches, policy_loss_fn(algorithm, counts))
    grads = {
        name: p.grad for name, p in megatron.model.named_parameters()
    }  # Megatron naming, this rank's shard
    hf_grads = megatron_to_hf({(0, 0): grads}, megatron.shape, megatron.layout)
    for name, parameter in torch_backend.model.named_parameters():
        torch.testing.assert_close(hf_grads[name], parameter.grad, atol=1e-6, rtol=1e-4)


def test_weights_and_checkpoints_come_back_in_hugging_face_naming(tiny_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    from agentrl.common.config import AgentRLConfig
    from agentrl.trainer.backends import create_backend

    config = AgentRLConfig.model_validate(
        {"model": {"path": str(tiny_checkpoint)}, "trainer": {"backend": "megatron"}}
    )
    backend = create_backend(config, OptimizerSettings(learning_rate=1e-2))
    token_ids = [[5, 9, 14, 3, 7, 22], [8, 8, 31, 2]]
    per_token = {
        "loss_mask": [[0, 1, 1, 1, 1, 1], [0, 0, 1, 1]],
        "advantages": [[1.0] * 6, [-1.0] * 4],
        "old_logprobs": [[-3.0] * 6, [-3.0] * 4],
    }
    micro_batches = pack_micro_batches(token_ids, 64, per_token)
    from agentrl.trainer.loss import GlobalTokenCounts, policy_loss_fn

    counts = GlobalTokenCounts.of(
        micro_batches[0].per_token["loss_mask"], micro_batches[0].seq_index
    )
    backend.train_step(micro_batches, policy_loss_fn(AlgorithmConfig(), counts))
    weights = backend.hf_weights()
    assert torch.equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"])  # tied
    state = backend.state_dict()
    assert state["schedule"]["step"] == 1

    # A fresh backend restored from the checkpoint state takes the same next step.
    restored = create_backend(config, OptimizerSettings(learning_rate=1e-2))
    restored.load_state_dict(state)
    for other in (backend, restored):
        other.train_step(micro_batches, policy_loss_fn(AlgorithmConfig(), counts))
    for name, tensor in backend.hf_weights().items():
        assert torch.equal(restored.hf_weights()[name], tensor), name

    # save_pretrained gives a checkpoint transformers loads, with the backend's log-probs.
    directory = backend.save_pretrained(tmp_path / "export")
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        expected, _ = token_logprobs_and_entropy(model, micro_batches[0])
    ((got, _),) = backend.logprobs(micro_batches)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_recompute_and_bfloat16_on_cpu_are_refused_with_the_reason(tiny_checkpoint):
    from agentrl.trainer.backends.megatron.backend import MegatronBackend

    if torch.cuda.is_available():
        pytest.skip("both run on CUDA (test_megatron_gpu.py)")
    settings = OptimizerSettings(learning_rate=1e-2)
    with pytest.raises(ValueError, match="recompute 'full' needs a CUDA GPU"):
        MegatronBackend(tiny_checkpoint, settings, layout=ParallelLayout(), recompute="full")
    with pytest.raises(ValueError, match="bfloat16 with trainer.backend megatron needs a CUDA"):
        MegatronBackend(tiny_checkpoint, settings, layout=ParallelLayout(), dtype="bfloat16")


def test_sft_loss_matches_the_torch_backends(tiny_checkpoint):
    """SFT's loss function (the other shared LossFn) gives the torch backend's loss and
    entropy (float32; bfloat16 needs CUDA, see test_recompute_and_bfloat16_on_cpu_...)."""
    from agentrl.trainer.backends.megatron.backend import MegatronBackend
    from agentrl.trainer.backends.torch.backend import TorchBackend
    from agentrl.trainer.loss import GlobalTokenCounts
    from agentrl.trainer.sft import sft_loss_fn

    settings = OptimizerSettings(learning_rate=1e-2)
    generator = torch.Generator().manual_seed(3)
    lengths = [14, 22, 9]
    token_ids = [torch.randint(3, 300, (n,), generator=generator).tolist() for n in lengths]
    per_token = {"loss_mask": [[0] * 5 + [1] * (n - 5) for n in lengths]}
    micro_batches = pack_micro_batches(token_ids, 32, per_token)
    counts = sum(
        (GlobalTokenCounts.of(mb.per_token["loss_mask"], mb.seq_index) for mb in micro_batches),
        GlobalTokenCounts(0, 0, 0),
    )
    expected = TorchBackend(tiny_checkpoint, settings, device="cpu").forward_backward(
        micro_batches, sft_loss_fn(counts)
    )
    megatron = MegatronBackend(tiny_checkpoint, settings, layout=ParallelLayout())
    got = megatron.forward_backward(micro_batches, sft_loss_fn(counts))
    assert got["loss"] == pytest.approx(expected["loss"], abs=2e-6)
    assert got["entropy"] == pytest.approx(expected["entropy"], abs=2e-6)
