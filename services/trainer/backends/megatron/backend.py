"""The `megatron` training backend: a megatron-core GPTModel with tensor, pipeline and data
parallelism.

    hf checkpoint ─convert.hf_to_megatron─► this rank's (stage, tensor) shard ─► GPTModel
        ─► stage by stage (pipeline.py, 1F1B) ─► last stage: logits (vocab-parallel, gathered
        over TP) ─► log-probs, entropy ─► loss_fn ─► backward, stage by stage in reverse
        ─► grads: SUM over data-parallel ranks, QK-norm grads SUM over TP ─► clip (global norm
        over TP and every stage) ─► AdamW ─► hf_weights(): shards gathered over TP x PP
        ─convert.megatron_to_hf─► transports

- Ranks: world = TP x PP x DP. The RL driver splits a step's micro-batches by global rank
  (`distributed.rank_share`); the ranks of one model replica (megatron's model-parallel group,
  TP x PP) must run the same sequences, so each verb first all-gathers its group's
  micro-batches and runs them all: a data-parallel replica trains on the union of its ranks'
  shares, every sequence once. Log-probs and metrics come from the last stage and are
  broadcast over the pipeline, so every rank returns what it would at PP 1.
- The loss is the caller's `loss_fn` (loss.policy_loss_fn or sft.sft_loss_fn), applied to the
  full-vocabulary log-probs exactly as the torch backend does (packing.py's shift and masking),
  normalised by the GLOBAL counts (`global_counts` sums over every rank), so gradients are
  summed over data-parallel ranks, never averaged.
- Precision: float32 master weights and AdamW state; `bfloat16` runs the forward under autocast
  (CUDA only: megatron's linear layers take CUDA's autocast state into their backward).
- State dicts are Hugging Face-named full tensors for the model and for AdamW's moments
  (gathered over TP x PP by the conversion table), so a checkpoint resumes at any TP or PP.
- Optimizer: torch's AdamW over each rank's shard; `distributed_optimizer` shards its state
  over data-parallel ranks (torch's ZeroRedundancyOptimizer over megatron's DP group).
- Pipeline stages: our 1F1B schedule (pipeline.py), not megatron-core's (it needs CUDA in
  0.16.1). A tied embedding at PP > 1 is two copies (first stage's embedding, last stage's
  output layer) whose gradients are summed over megatron's embedding group.
- What is NOT covered: megatron-core's own schedules and DistributedOptimizer (both need CUDA
  in megatron-core 0.16.1, docs/trainer.md), interleaved pipeline schedules,
  sequence/context parallelism, THD packed attention
  (needs Transformer Engine), and loading only this rank's slice of the checkpoint (every
  rank reads the whole Hugging Face checkpoint once at start).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from agentrl.trainer.backends.interface import (
    LossFn,
    OptimizerSettings,
    StepStats,
    TrainerBackend,
)
from agentrl.trainer.backends.megatron import model as megatron_model
from agentrl.trainer.backends.megatron import pipeline
from agentrl.trainer.backends.megatron.convert import (
    EMBEDDING_RULE,
    OUTPUT_RULE,
    ConversionError,
    ModelShape,
    ParallelLayout,
    hf_to_megatron,
    megatron_to_hf,
    replicated_names,
)
from agentrl.trainer.loss import GlobalTokenCounts
from agentrl.trainer.packing import MicroBatch, logprobs_and_entropy_from_logits


def read_hf_state(model_path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face checkpoint directory (safetensors, float32 on CPU)."""
    from safetensors.torch import load_file

    files = sorted(model_path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_path} holds no *.safetensors file to convert")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update({k: v.float() for k, v in load_file(file).items()})
    return state


class MegatronBackend(TrainerBackend):
    """A Hugging Face checkpoint trained as a megatron-core GPTModel with AdamW."""

    def __init__(
        self,
        model_path: str | Path,
        optimizer: OptimizerSettings,
        *,
        layout: ParallelLayout,
        dtype: str = "float32",
        recompute: megatron_model.Recompute = "none",
        distributed_optimizer: bool = False,
    ) -> None:
        import torch.distributed as dist
        from megatron.core import parallel_state
        from transformers import AutoConfig, AutoTokenizer

        model_path = Path(model_path)
        if not (model_path / "config.json").is_file():
            raise ValueError(
                f"{model_path} is not a Hugging Face checkpoint directory (no config.json)"
            )
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"training dtype {dtype!r} is not supported; use float32 or bfloat16")
        if dtype == "bfloat16" and not torch.cuda.is_available():
            raise ValueError(
                "model.dtype bfloat16 with trainer.backend megatron needs a CUDA GPU: "
                "megatron-core 0.16.1's linear layers run their backward under CUDA's autocast "
                "state (torch.amp.custom_bwd(device_type='cuda'), tensor_parallel/layers.py), "
                "so a CPU autocast forward fails in backward; use float32 on CPU"
            )
        if recompute != "none" and not torch.cuda.is_available():
            raise ValueError(
                f"trainer.megatron.recompute {recompute!r} needs a CUDA GPU: megatron-core "
                "0.16.1's activation checkpoint saves the CUDA RNG state "
                "(tensor_parallel/random.py); use recompute: none on CPU"
            )
        self.settings = optimizer
        self.layout = layout
        self.compute_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        self.hf_config = AutoConfig.from_pretrained(model_path)
        self.shape = ModelShape.from_hf(self.hf_config)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        megatron_model.init_parallel(layout)
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
        self.tp_group = parallel_state.get_tensor_model_parallel_group()
        self.dp_group = parallel_state.get_data_parallel_group()
        self.tp_rank = parallel_state.get_tensor_model_parallel_rank()
        self.pp_rank = parallel_state.get_pipeline_model_parallel_rank()
        # The ranks of one model replica (TP x PP): they run the same micro-batches.
        self.model_parallel_group = parallel_state.get_model_parallel_group()
        self.stage = pipeline.Stage.current()
        # A tied embedding at PP > 1: the first stage's embedding and the last stage's output
        # layer are two copies of one weight; their gradients are summed over megatron's
        # embedding group (first and last stage of this pipeline, same tensor rank), so both
        # take the same update, and the grad norm counts the last stage's copy out.
        self.tied_copy = None
        if self.shape.tied_embeddings and layout.pp > 1:
            if self.stage.is_first:
                self.tied_copy = EMBEDDING_RULE.megatron
            elif self.stage.is_last:
                self.tied_copy = OUTPUT_RULE.megatron
        self.model = megatron_model.build_gpt_model(
            self.hf_config, layout, dtype=self.compute_dtype, recompute=recompute
        )
        shard = hf_to_megatron(read_hf_state(model_path), self.shape, layout)[self._shard_key]
        result = self.model.load_state_dict(shard, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
        if missing or result.unexpected_keys:
            raise ConversionError(
                f"GPTModel and the conversion table disagree: missing {missing[:8]}, "
                f"unexpected {result.unexpected_keys[:8]}"
            )
        self.model.to(self.device)
        self.rope = megatron_model.Rope.from_hf(self.hf_config)
        # From the conversion table: megatron marks sharded weights only when it initialises
        # them, and every weight here is loaded instead.
        self.replicated = replicated_names(self.shape, layout, pp_rank=self.pp_rank)
        adamw = {
            "lr": optimizer.learning_rate * optimizer.lr_factor(0),
            "betas": optimizer.betas,
            "weight_decay": optimizer.weight_decay,
        }
        # Optimizer-state sharding over data-parallel ranks (ZeRO stage 1): each DP rank keeps
        # AdamW's moments of its part of the parameters (whole tensors, balanced by size),
        # steps them and broadcasts the new values. megatron-core's DistributedOptimizer does
        # the same over flat buffers but cannot be built without CUDA (docs/trainer.md).
        self.sharded_optimizer = distributed_optimizer and dist.get_world_size(self.dp_group) > 1
        if self.sharded_optimizer:
            from torch.distributed.optim import ZeroRedundancyOptimizer

            self.optimizer = ZeroRedundancyOptimizer(
                list(self.model.parameters()),
                optimizer_class=torch.optim.AdamW,
                process_group=self.dp_group,
                **adamw,
            )
        else:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), **adamw)
        self.step = 0
        self._world = dist.get_world_size()

    @property
    def _shard_key(self) -> tuple[int, int]:
        """This rank's key in convert.py's shards: (pipeline stage, tensor rank)."""
        return (self.pp_rank, self.tp_rank)

    # --- forward -----------------------------------------------------------------------------

    def _group_micro_batches(self, micro_batches: Sequence[MicroBatch]) -> tuple[list, int]:
        """All micro-batches of this model replica, its TP x PP ranks (see the module
        docstring), and where this rank's own ones start in that list."""
        for micro_batch in micro_batches:
            if micro_batch.cu_seqlens is None or micro_batch.input_ids.shape[0] != 1:
                raise ValueError(
                    "the Megatron backend trains packed micro-batches ([1, T] rows with "
                    "cu_seqlens, packing.pack_micro_batches); padded ones are not supported"
                )
        if self.layout.tp * self.layout.pp == 1:
            return list(micro_batches), 0
        import torch.distributed as dist

        gathered: list[Any] = [None] * (self.layout.tp * self.layout.pp)
        dist.all_gather_object(gathered, list(micro_batches), group=self.model_parallel_group)
        mine = dist.get_rank(self.model_parallel_group)
        start = sum(len(gathered[r]) for r in range(mine))
        return [mb for share in gathered for mb in share], start

    def _autocast(self):
        if self.compute_dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def _forward(
        self,
        micro_batch: MicroBatch,
        temperature: float,
        input_tensor: torch.Tensor | None = None,
    ):
        """This stage's forward of a micro-batch: on the last stage (log-probs, entropy), on
        the others the hidden states for the next one."""
        from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

        input_ids = micro_batch.input_ids.to(self.device)
        with self._autocast():
            logits = megatron_model.forward_stage(
                self.model,
                self.rope,
                input_ids,
                micro_batch.position_ids.to(self.device),
                micro_batch.cu_seqlens,
                input_tensor,
            )
        if not self.stage.is_last:
            return logits  # hidden states [T, 1, H]
        # [T, 1, V_padded / TP] -> the full vocabulary without its padding, [1, T, V].
        logits = gather_from_tensor_model_parallel_region(logits.float())
        logits = logits[..., : self.shape.vocab_size].transpose(0, 1)
        return logprobs_and_entropy_from_logits(
            logits, input_ids, micro_batch.seq_index.to(self.device), temperature
        )

    def logprobs(
        self, micro_batches: Sequence[MicroBatch], temperature: float = 1.0
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        group, start = self._group_micro_batches(micro_batches)
        self.model.eval()

        def forward(micro_batch: MicroBatch, received: torch.Tensor | None):
            output = self._forward(micro_batch, temperature, received)
            if not self.stage.is_last:
                return output
            logprobs, entropy = output
            return logprobs.float().cpu(), entropy.float().cpu()

        out = pipeline.forward_only(self.stage, group, forward, self._hidden_shape, self.device)
        out = pipeline.broadcast_from_last(self.stage, out)
        return out[start : start + len(micro_batches)]

    def _hidden_shape(self, micro_batch: MicroBatch) -> tuple[int, int, int]:
        """What arrives from the previous stage for a [1, T] micro-batch: [T, 1, H]."""
        return (micro_batch.input_ids.shape[-1], 1, self.shape.hidden_size)

    def forward_backward(
        self, micro_batches: Sequence[MicroBatch], loss_fn: LossFn, temperature: float = 1.0
    ) -> dict[str, float]:
        group, _ = self._group_micro_batches(micro_batches)
        self.model.train()
        totals: dict[str, float] = {}

        def forward(micro_batch: MicroBatch, received: torch.Tensor | None):
            output = self._forward(micro_batch, temperature, received)
            if not self.stage.is_last:
                return output
            logprobs, entropy = output
            on_device = dataclasses.replace(
                micro_batch,
                seq_index=micro_batch.seq_index.to(self.device),
                per_token={k: v.to(self.device) for k, v in micro_batch.per_token.items()},
            )
            loss, metrics = loss_fn(logprobs, entropy, on_device)
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0.0) + float(value)
            return loss

        pipeline.forward_backward(self.stage, group, forward, self._hidden_shape, self.device)
        self._reduce_grads()
        # The last stage computed the metrics, the same on each of its TP ranks: hand them to
        # every stage, then sum over data-parallel replicas.
        totals = pipeline.broadcast_from_last(self.stage, totals)
        return self._all_reduce_metrics(totals, self.dp_group)

    def _reduce_grads(self) -> None:
        """Gradients summed over data-parallel ranks; QK-norm weights (shared by the heads of
        every tensor rank) summed over TP as well, and a tied embedding's two copies summed
        between the first and last stage, as megatron's finalize_model_grads does."""
        import torch.distributed as dist
        from megatron.core import parallel_state

        for name, parameter in self.model.named_parameters():
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            if dist.get_world_size(self.dp_group) > 1:
                dist.all_reduce(parameter.grad, group=self.dp_group)
            if self.layout.tp > 1 and ("q_layernorm" in name or "k_layernorm" in name):
                dist.all_reduce(parameter.grad, group=self.tp_group)
            if name == self.tied_copy:
                dist.all_reduce(parameter.grad, group=parallel_state.get_embedding_group())

    def _all_reduce_metrics(self, metrics: dict[str, float], group) -> dict[str, float]:
        import torch.distributed as dist

        if dist.get_world_size(group) == 1:
            return metrics
        names = sorted(metrics)
        tensor = torch.tensor([metrics[n] for n in names], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, group=group)
        return dict(zip(names, tensor.tolist(), strict=True))

    # --- optimizer ---------------------------------------------------------------------------

    def _grad_norm(self) -> float:
        """The global L2 norm: TP-sharded gradients summed over TP, replicated ones once,
        then every pipeline stage's part summed."""
        import torch.distributed as dist

        sharded = torch.zeros((), dtype=torch.float64, device=self.device)
        replicated = torch.zeros((), dtype=torch.float64, device=self.device)
        for name, parameter in self.model.named_parameters():
            if self.stage.is_last and name == self.tied_copy:
                continue  # the first stage counts the tied embedding
            square = parameter.grad.double().square().sum()
            if name in self.replicated:
                replicated += square
            else:
                sharded += square
        if self.layout.tp > 1:
            dist.all_reduce(sharded, group=self.tp_group)
        total = sharded + replicated
        if self.layout.pp > 1:
            dist.all_reduce(total, group=self.stage.group)
        return float(total.sqrt())

    def optimizer_step(self) -> StepStats:
        learning_rate = self.settings.learning_rate * self.settings.lr_factor(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        grad_norm = self._grad_norm()
        if math.isfinite(grad_norm):
            scale = self.settings.max_grad_norm / (grad_norm + 1e-6)
            if scale < 1.0:
                for parameter in self.model.parameters():
                    parameter.grad.mul_(scale)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return StepStats(step=self.step, grad_norm=grad_norm, learning_rate=learning_rate)

    def global_counts(self, local: GlobalTokenCounts) -> GlobalTokenCounts:
        # Every global rank holds a distinct share of the step (distributed.rank_share).
        if self._world == 1:
            return local
        import torch.distributed as dist

        values = torch.tensor(
            [local.num_loss_tokens, local.num_sequences, local.num_tokens],
            dtype=torch.long,
            device=self.device,
        )
        dist.all_reduce(values)
        return GlobalTokenCounts(*values.tolist())

    # --- weights out -------------------------------------------------------------------------

    def _gathered_shards(
        self, local: dict[str, torch.Tensor]
    ) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
        """Every (stage, tensor rank)'s `local` tensors, on every rank of the model replica."""
        if self.layout.tp * self.layout.pp == 1:
            return {self._shard_key: local}
        import torch.distributed as dist

        gathered: list[Any] = [None] * (self.layout.tp * self.layout.pp)
        dist.all_gather_object(gathered, (self._shard_key, local), group=self.model_parallel_group)
        return dict(gathered)

    def _hf_state(self, tied_head: bool) -> dict[str, torch.Tensor]:
        local = {
            name: tensor.detach().cpu().clone()  # a snapshot: training goes on in place
            for name, tensor in self.model.state_dict().items()
            if not name.endswith("_extra_state")
        }
        return megatron_to_hf(
            self._gathered_shards(local), self.shape, self.layout, tied_head=tied_head
        )

    def is_main_process(self) -> bool:
        import torch.distributed as dist

        return dist.get_rank() == 0

    def hf_weights(self) -> dict[str, torch.Tensor]:
        state = self._hf_state(tied_head=True)
        return state if self.is_main_process() else {}

    def _adamw(self) -> torch.optim.Optimizer:
        """The AdamW holding this rank's moments (with sharding: only its DP share's)."""
        return self.optimizer.optim if self.sharded_optimizer else self.optimizer

    def state_dict(self) -> dict[str, Any]:
        """Model and AdamW state in Hugging Face naming and full shapes, so a checkpoint resumes
        at any tensor-parallel size: AdamW's `exp_avg` and `exp_avg_sq` are parameter-shaped,
        so they are gathered over TP by the same conversion table as the weights (the
        vocabulary padding, whose moments stay 0, is dropped and re-added on load)."""
        import torch.distributed as dist

        moments: dict[str, dict[str, torch.Tensor]] = {"exp_avg": {}, "exp_avg_sq": {}}
        steps = set()
        adamw = self._adamw()
        for name, parameter in self.model.named_parameters():
            state = adamw.state.get(parameter, {})
            if "step" in state:
                steps.add(float(state["step"]))
            for moment, tensors in moments.items():
                value = state.get(moment)
                value = torch.zeros_like(parameter) if value is None else value.detach().clone()
                if self.sharded_optimizer:  # one DP rank holds it, the others add zeros
                    dist.all_reduce(value, group=self.dp_group)
                tensors[name] = value.cpu()  # a snapshot: training goes on in place
        if self.sharded_optimizer:
            shared: list[Any] = [None] * dist.get_world_size(self.dp_group)
            dist.all_gather_object(shared, sorted(steps), group=self.dp_group)
            steps = {step for part in shared for step in part}
        if len(steps) > 1:
            raise RuntimeError(f"AdamW's step counts differ between parameters: {sorted(steps)}")
        return {
            "model": self._hf_state(tied_head=False),
            "optimizer": {
                "adam_step": steps.pop() if steps else None,
                **{m: self._to_hf(tensors) for m, tensors in moments.items()},
            },
            "layout": {"tp": self.layout.tp, "pp": self.layout.pp},
            "schedule": {"step": self.step},
        }

    def _to_hf(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Parameter-shaped tensors of this rank (Megatron names), as full Hugging Face ones."""
        return megatron_to_hf(self._gathered_shards(local), self.shape, self.layout)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`'s output, written at any tensor or pipeline size."""
        if "optimizer" not in state:
            raise ValueError(
                "this Megatron checkpoint predates resharding (it has no 'optimizer' entry in "
                "Hugging Face naming); resume it with the version that wrote it"
            )

        def mine(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return hf_to_megatron(hf_state, self.shape, self.layout)[self._shard_key]

        shard = mine(state["model"])
        with torch.no_grad():
            for name, parameter in self.model.named_parameters():
                parameter.copy_(shard[name])
        saved = state["optimizer"]
        adamw = self._adamw()
        adamw.state.clear()
        if saved["adam_step"] is not None:
            exp_avg, exp_avg_sq = mine(saved["exp_avg"]), mine(saved["exp_avg_sq"])
            owned = {id(p) for group in adamw.param_groups for p in group["params"]}
            for name, parameter in self.model.named_parameters():
                if id(parameter) not in owned:  # another DP rank's share
                    continue
                adamw.state[parameter] = {
                    "step": torch.tensor(saved["adam_step"], dtype=torch.float32),
                    "exp_avg": exp_avg[name].to(self.device).clone(),
                    "exp_avg_sq": exp_avg_sq[name].to(self.device).clone(),
                }
        self.step = int(state["schedule"]["step"])

    def save_pretrained(self, directory: str | Path) -> Path:
        from transformers import AutoModelForCausalLM

        directory = Path(directory)
        state = self._hf_state(tied_head=False)
        if self.is_main_process():
            directory.mkdir(parents=True, exist_ok=True)
            model = AutoModelForCausalLM.from_config(self.hf_config)
            model.load_state_dict(state, strict=not self.shape.tied_embeddings)
            model.save_pretrained(directory)
            self.tokenizer.save_pretrained(directory)
        return directory
