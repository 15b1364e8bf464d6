"""The RL training loop over Redis and the vLLM pool: `run_training(config)` (for `agentrl train`).

    admit ─► prompts stream ─► (rollout workers) ─► groups stream ─► step ─► sync ─► checkpoint

Per optimizer step:
1. admit: publish `RolloutTask`s (data-set prompts, rendered and tokenised once) to
   `agentrl:{run_id}:prompts` while the staleness bound allows (driver.AdmissionControl): as
   soon as the previous step's sync made its version the served one (step 4), and while
   waiting; the task's idempotency key is `{run_id}:{epoch}:{offset}` of the data order, so a
   resumed run re-admitting the same prompts reuses their keys.
2. wait: read `Group`s from `agentrl:{run_id}:groups` (consumer group `trainer`, consumer
   `trainer-{run_id}`) until `batch_size` groups with a learning signal are in; dropped groups
   (zero signal, all samples stale) free their admission slot, so more prompts are admitted
   meanwhile (dynamic sampling's refill). Groups beyond the batch wait for the next step.
   After `algorithm.dynamic_sampling_max_batches` batches' worth of groups the step stops
   waiting and trains on what it has, zero-signal groups filling the batch with advantage 0.
3. train: driver.train_step on the TrainBatch (with the reference policy's log-probs when the
   KL needs them: reference.py, built from model.path before any resume); policy version + 1.
4. sync: the weight transport (`trainer.weight_transport`, transports/) makes every server
   serve the new version, which is then published in Redis (policy_version.py); then the drift
   check (drift_check.py, `trainer.drift_check`) compares vLLM's and the trainer's log-probs of
   one sample just trained on, on every server.
5. every `checkpoint_interval_steps` (and at the end): checkpoint, THEN `complete()` every
   group entry used since the previous checkpoint (streams.py: a group is acked only once the
   update that used it is durable). A crash replays the unacked groups, in order, to the same
   consumer name, from the restored checkpoint: the same batches again.
While it runs, the trainer serves its status (gRPC `TrainerStatusService`, the phase of the
step) and Prometheus `/metrics` on `trainer.grpc_port` / `trainer.http_port` (status_server.py).
Each step's record also carries the collapse detector's flags (collapse.py: `collapse_warning`
and one flag per signal). After each evaluation the evaluated weights are offered as `best/`
(checkpoint.BestCheckpoint: kept when the held-out avg@k beats every earlier evaluation, the
"before" one included). Metrics per step go to `<run dir>/metrics.jsonl` and Prometheus
(metrics.StepMetricsWriter), a
few example trajectories per step to `samples.jsonl` and the resolved config to `config.json`
(run_files.py). With `trainer.eval_samples_per_prompt` = k > 0 the run evaluates
`data.eval_path` through the same pool (eval_job.run_eval) before the first step
(`eval/before.json`), every `trainer.eval_interval_steps` and after the last (`eval/after.json`).

Data parallel (`trainer.parallelism: fsdp2` under torchrun, distributed.py): rank 0 alone talks
to Redis (admission, reading and completing groups, the policy version), the pool (weight
reloads, drift check, evaluation) and the run directory (metrics, samples, checkpoint files,
the status servers). Each step it broadcasts the groups it read (serialised `Group`s) and every
rank builds the same TrainBatch from them, trains on its share, and takes part in the
collective verbs in the same order: the step, the weight gathering of `transport.sync`, the
drift check's log-probs, the checkpoint's state. Resuming, every rank loads the checkpoint rank
0 picked.

Not covered: several trainer replicas (one consumer).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.common.config import AgentRLConfig
from agentrl.common.logging import get_logger
from agentrl.common.policy_version import PolicyVersionPublisher
from agentrl.common.run_layout import GROUPS_GROUP, PROMPTS_GROUP, RunLayout
from agentrl.common.streams import StreamEntry, StreamQueue
from agentrl.trainer.checkpoint import BestCheckpoint, CheckpointManager, TrainingState
from agentrl.trainer.collapse import CollapseDetector
from agentrl.trainer.data import EpochOrder, PromptRow, load_prompts
from agentrl.trainer.distributed import broadcast_object, is_main_process
from agentrl.trainer.drift_check import DriftCheckSkipped, check_logprob_drift
from agentrl.trainer.intake import GroupIntake
from agentrl.trainer.metrics import StepMetricsWriter, read_step_metrics
from agentrl.trainer.pool_weights import PoolWeights
from agentrl.trainer.reference import ReferencePolicy
from agentrl.trainer.rl_step import AdmissionControl, step_metrics, train_step
from agentrl.trainer.run_files import SampleWriter, write_config
from agentrl.trainer.status_server import StatusBoard, start_status_servers
from agentrl.trainer.train_batch import build_train_batch
from agentrl.trainer.transports import SyncResult

log = get_logger(__name__)

# A blocking stream read waits at most this long, so admission is re-checked every second.
READ_BLOCK_MS = 1000


@dataclass
class TrainingResult:
    steps: int
    policy_version: int
    run_dir: Path
    metrics: list[dict[str, Any]] = field(default_factory=list)


class TrainingTimeout(RuntimeError):
    """No full batch of groups arrived in time (are rollout workers running?)."""


def make_task(row: PromptRow, config: AgentRLConfig, tokenizer: Any, key: str, version: int):
    """The RolloutTask of one data-set row. Episode limits, the per-turn token budget and the
    ARPO switch come from the `rollout` section; a limit left unset there stays 0 in the task,
    i.e. the rollout default, as do the other sampling fields. The episode's token budget is
    capped at `inference.server.max_model_len` - 1."""
    from agentrl.common.agent.loop import EpisodeSettings
    from agentrl.proto.core.v1 import task_pb2
    from agentrl.trainer.rendering import render_prompt

    rollout = config.rollout
    text = render_prompt(
        [{"role": "user", "content": row.prompt}],
        tokenizer,
        "chat_template" if getattr(tokenizer, "chat_template", None) else "plain",
    )
    prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
    max_total_tokens = (
        len(prompt_ids) + rollout.max_response_tokens if rollout.max_response_tokens else 0
    )
    # An episode never outgrows the engine's context: vLLM answers a longer request with a 400
    # and the episode would end in an error. A long prompt leaves its episode less room. One
    # token less than the context: scoring a whole episode (the drift check's prompt
    # log-probs, InferencePool.score) asks vLLM for one token after it, and an episode of
    # exactly max_model_len tokens got a 400 there that ended the run.
    context = config.inference.server.max_model_len - 1
    if (max_total_tokens or EpisodeSettings.max_total_tokens) > context:
        max_total_tokens = context
    return task_pb2.RolloutTask(
        task_id=key,
        idempotency_key=key,
        prompt_id=row.prompt_id,
        prompt_token_ids=prompt_ids,
        prompt_text=text,
        task_type=row.task_type,
        ground_truth=row.ground_truth,
        metadata=row.metadata,
        tools=list(row.tools),
        tool_format=rollout.tool_format,
        num_samples=config.algorithm.group_size,
        admitted_policy_version=version,
        sampling=task_pb2.SamplingParams(max_tokens_per_turn=rollout.max_tokens_per_turn or 0),
        limits=task_pb2.EpisodeLimits(
            max_turns=rollout.max_turns or 0,
            max_tool_calls=rollout.max_tool_calls or 0,
            max_total_tokens=max_total_tokens,
        ),
        tree_sampling=rollout.tree_sampling,
        created_at_unix_s=time.time(),
    )


class RLTrainer:
    """State of one run of the loop; `run_training` builds it and calls `run`."""

    def __init__(
        self,
        config: AgentRLConfig,
        pool=None,
        *,
        wait_timeout_s: float = 600.0,
        drift_check_token_ids: list[int] | None = None,
        status: StatusBoard | None = None,
    ) -> None:
        from agentrl.common.inference.pool import InferencePool
        from agentrl.trainer.backends import create_backend
        from agentrl.trainer.transports import create_transport

        if config.data is None:
            raise ValueError("the recipe has no `data` section; set data.train_path")
        self.config, self.trainer, self.algorithm = config, config.trainer, config.algorithm
        self.run_id, self.run_dir = config.run.run_id, Path(config.run.output_dir)
        self.wait_timeout_s = wait_timeout_s
        self.drift_check_token_ids = drift_check_token_ids  # default: a sample just trained on
        self.drift_rng = random.Random(config.run.seed)
        self.backend = create_backend(config)
        # Built from model.path before any resume: the run's initial weights, frozen.
        self.reference = ReferencePolicy.for_run(config)
        self.main = self.backend.is_main_process()  # rank 0: Redis, the pool, the run dir
        self.order = EpochOrder(load_prompts(config.data.train_path), seed=config.run.seed)
        self.admission = AdmissionControl(self.trainer.batch_size, self.trainer.max_staleness)
        self.prompts = self.groups = self.publisher = None
        if self.main:
            redis_url, layout = config.redis.url, RunLayout(self.run_id)
            deadline_s = config.redis.reconnect_deadline_s
            self.prompts = StreamQueue(
                redis_url,
                layout.prompts,
                PROMPTS_GROUP,
                maxlen=config.redis.max_stream_length,
                retry_deadline_s=deadline_s,
            )
            self.groups = StreamQueue(
                redis_url,
                layout.groups,
                GROUPS_GROUP,
                consumer=layout.trainer_consumer,
                visibility_timeout_ms=int(config.redis.visibility_timeout_s * 1000),
                retry_deadline_s=deadline_s,
            )
            self.groups.ensure_group()
            self.publisher = PolicyVersionPublisher(
                redis_url, self.run_id, config.redis.reconnect_deadline_s
            )
        # Every rank holds the pool and calls `transport.sync` (gathering weights is
        # collective); only rank 0 sends anything to the servers (transports/interface.py).
        self.pool = pool or InferencePool.from_config(config.inference)
        self.transport = create_transport(config, self.backend, self.pool, self.run_dir)
        self.weights = PoolWeights(self.transport, self.pool, main=self.main)
        self.checkpoints = CheckpointManager(
            self.run_dir / "checkpoints", self.trainer.keep_checkpoints
        )
        self.best = BestCheckpoint(self.run_dir)  # best held-out avg@k so far, in best/
        self.collapse = CollapseDetector(self.trainer.collapse)
        self.step, self.version = 0, 0
        self.status = status or StatusBoard(self.run_id)  # served by status_server.py
        self.carry: list[StreamEntry] = []  # read beyond the last batch: the next step's
        self.uncommitted: list[StreamEntry] = []  # used since the last checkpoint
        # Rank 0: each key trained once within a checkpoint window too, and groups.jsonl.
        self.intake = GroupIntake(self.groups, self.run_dir) if self.main else None
        self.consumed: list[tuple] = []  # (Group, entry, kept) of the last collect()

    def admit(self) -> int:
        count = self.admission.capacity(self.version)
        for _ in range(count):
            epoch, offset = self.order.epoch, self.order.offset
            (row,) = self.order.take(1)
            key = f"{self.run_id}:{epoch}:{offset}"
            self.prompts.publish(
                make_task(row, self.config, self.backend.tokenizer, key, self.version)
            )
        self.admission.on_admitted(count)
        return count

    async def collect(self) -> tuple[list, list[StreamEntry], float, bool]:
        """Groups (kept and dropped) for one step, their entries, seconds waited, and whether
        dynamic sampling hit its cap (then dropped groups fill the batch)."""
        from agentrl.proto.core.v1 import group_pb2

        start = time.perf_counter()
        kept, dropped, entries = [], [], []
        self.consumed = []
        max_groups = self.trainer.batch_size * self.algorithm.dynamic_sampling_max_batches
        while len(kept) < self.trainer.batch_size:
            if len(kept) + len(dropped) >= max_groups:
                filler = dropped[: self.trainer.batch_size - len(kept)]
                return kept + filler, entries, time.perf_counter() - start, True
            if time.perf_counter() - start > self.wait_timeout_s:
                raise TrainingTimeout(
                    f"{len(kept)} of {self.trainer.batch_size} groups after "
                    f"{self.wait_timeout_s:.0f} s; are rollout workers up?"
                )
            self.admit()
            batch, self.carry = self.carry, []
            if not batch:
                batch = await asyncio.to_thread(
                    self.groups.read, self.trainer.batch_size, READ_BLOCK_MS
                )
            for index, entry in enumerate(batch):
                if len(kept) == self.trainer.batch_size:
                    self.carry = batch[index:]
                    break
                if not self.intake.admit(entry):  # a copy of a consumed group (intake.py)
                    continue
                group = entry.decode(group_pb2.Group)
                probe = build_train_batch(
                    [group], self.version, self.algorithm, self.trainer.max_staleness
                )
                if self.admission.running > 0:  # groups of a run before a resume may exceed it
                    self.admission.on_returned(1, probe.num_kept_groups)
                (kept if probe.num_kept_groups else dropped).append(group)
                entries.append(entry)
                self.consumed.append((group, entry, bool(probe.num_kept_groups)))
        return kept + dropped, entries, time.perf_counter() - start, False

    async def next_groups(self) -> tuple[list, list[StreamEntry], float, bool]:
        """`collect` on rank 0, its groups broadcast to every rank (the other ranks get no
        entries: completing them is rank 0's)."""
        from agentrl.proto.core.v1 import group_pb2

        if self.main:
            groups, entries, waited_s, capped = await self.collect()
            broadcast_object(([g.SerializeToString() for g in groups], capped))
            return groups, entries, waited_s, capped
        payloads, capped = broadcast_object(None)
        return [group_pb2.Group.FromString(p) for p in payloads], [], 0.0, capped

    def checkpoint(self) -> None:
        self.checkpoints.save(
            self.backend,
            TrainingState(  # every rank gathers; rank 0 writes
                step=self.step,
                policy_version=self.version,
                data_position=self.order.state_dict(),
                extra={
                    "admission": self.admission.state_dict(),
                    # A crash before complete() below must not train these keys again.
                    "intake_window": self.intake.state() if self.main else [],
                },
            ),
        )
        if self.main:
            self.groups.complete(self.uncommitted)  # only now are their updates durable
            self.intake.committed()
        self.uncommitted = []

    def resume(self) -> None:
        latest = broadcast_object(self.checkpoints.latest() if self.main else None)
        if latest is None:
            if self.main:
                # A fresh run: whatever a finished run of the same run_id left in its streams
                # (unread tasks, done keys that would make workers skip our tasks) goes first.
                for queue in (self.prompts, self.groups):
                    queue.delete()
                    queue.ensure_group()
                if self.intake.path.exists():  # a run killed before its first checkpoint
                    self.intake.record_resume(0)
            return
        state = self.checkpoints.load(self.backend, latest)
        self.step, self.version = state.step, state.policy_version
        self.order.load_state_dict(state.data_position)
        self.admission.load_state_dict(state.extra["admission"])
        if self.main:
            self.intake.load_state(state.extra.get("intake_window", []))
            self.intake.record_resume(self.step)

    async def evaluate(self, name: str) -> dict[str, Any] | None:
        """Evaluate the served policy on `data.eval_path` into `eval/<name>.json` (when on)."""
        from agentrl.trainer.eval_job import run_eval

        k, eval_path = self.trainer.eval_samples_per_prompt, self.config.data.eval_path
        if not k or eval_path is None or not self.main:
            return None
        self.status.set_phase("evaluating")
        started = time.perf_counter()
        result = await asyncio.to_thread(
            run_eval,
            self.config,
            eval_path,
            k,
            self.run_dir / "eval" / f"{name}.json",
            tokenizer=self.backend.tokenizer,
        )
        overall = result.report["overall"]
        return {
            "eval_avg_at_k": overall["avg_at_k"],
            "eval_pass_at_k": overall["pass_at_k"],
            "time_eval_s": time.perf_counter() - started,
        }

    def keep_best(self, evaluation: dict[str, Any] | None, name: str) -> dict[str, Any]:
        """Offer the weights just evaluated as `best/` (every rank calls it after `evaluate`:
        saving is collective); the step metrics `eval_best_avg_at_k` and `best_step`."""
        if not (self.trainer.eval_samples_per_prompt and self.config.data.eval_path):
            return {}
        decision = None
        if self.main and evaluation is not None:
            better = self.best.is_better(evaluation["eval_avg_at_k"])
            decision = (better, evaluation["eval_avg_at_k"], evaluation["eval_pass_at_k"])
        decision = broadcast_object(decision)
        if decision is None:
            return {}
        better, avg_at_k, pass_at_k = decision
        if better:
            self.best.save(
                self.backend,
                {
                    "step": self.step,
                    "policy_version": self.version,
                    "eval_avg_at_k": avg_at_k,
                    "eval_pass_at_k": pass_at_k,
                    "eval_file": f"eval/{name}.json",
                },
            )
        best = self.best.record() if self.main else None
        if best is None:
            return {}
        return {"eval_best_avg_at_k": best["eval_avg_at_k"], "best_step": best["step"]}

    async def sync_weights(self) -> SyncResult:
        """Serve the trainer's weights as `self.version` on every server, then publish it."""
        result = await self.weights.push(self.version)
        if self.main:
            self.publisher.publish(self.version, result.weights_uri, result.checksum)
        return result

    async def drift(self, batch) -> dict[str, float]:
        """The post-sync drift check on one sample just trained on (or the fixed sequence the
        caller gave): `logprob_drift_max`, `logprob_drift_mean`, `logprob_drift_alarm`."""
        token_ids = self.drift_check_token_ids or self.drift_rng.choice(batch.samples).token_ids
        if not self.main:  # the trainer's side of the check is a collective forward
            from agentrl.trainer.packing import pack_micro_batches

            self.backend.logprobs(pack_micro_batches([list(token_ids)], len(token_ids)))
            return {}
        try:
            report = await check_logprob_drift(
                self.backend,
                self.pool,
                list(token_ids),
                self.trainer.drift_threshold,
                raise_above=False,
            )
        except DriftCheckSkipped as skipped:  # vLLM died after the sync: the next step waits
            log.warning("drift check skipped at version %d: %s", self.version, skipped)
            return {"logprob_drift_skipped": 1}
        if report.unanswered:
            log.warning("drift check left out %s (no answer)", ", ".join(report.unanswered))
        if report.exceeded:
            log.warning("%s", report.describe())
        return {
            "logprob_drift_max": report.max_abs_diff,
            "logprob_drift_mean": report.mean_abs_diff,
            "logprob_drift_alarm": int(report.exceeded),
        }

    async def run(
        self, max_steps: int, on_step: Callable[[dict], None] | None = None
    ) -> TrainingResult:
        self.resume()
        self.status.set_position(
            self.step,
            self.version,
            read_step_metrics(self.run_dir) if self.step and self.main else [],
        )
        if self.main:
            write_config(self.run_dir, self.config)
        # The pool may serve other weights (newer than the checkpoint, or another run's):
        # serve exactly the trainer's before the first prompt is admitted.
        await self.sync_weights()
        if self.step == 0 and self.step < max_steps:
            self.keep_best(await self.evaluate("before"), "before")
        if self.main and self.step:  # a resumed run: the detector's window spans the restart
            self.collapse.extend(read_step_metrics(self.run_dir))
        result = TrainingResult(steps=0, policy_version=self.version, run_dir=self.run_dir)
        samples = SampleWriter(self.run_dir, self.backend.tokenizer) if self.main else None
        interval = self.trainer.eval_interval_steps
        skipped_entries = 0  # groups read by steps that had nothing to train on
        skipped_duplicates = 0  # copies skipped while collecting for such steps
        with StepMetricsWriter(self.run_dir) if self.main else nullcontext() as writer:
            while self.step < max_steps:
                self.status.set_phase("training")
                await self.weights.catch_up(self.version)
                groups, entries, waited_s, capped = await self.next_groups()
                # Capped: train on the zero-signal groups too (advantage 0) rather than wait.
                algorithm = (
                    self.algorithm.model_copy(update={"dynamic_sampling": False})
                    if capped
                    else self.algorithm
                )
                batch = build_train_batch(
                    groups, self.version, algorithm, self.trainer.max_staleness
                )
                if not batch.samples:  # every sample stale or failed: nothing to learn from
                    self.uncommitted.extend(entries)
                    skipped_entries += len(entries)
                    if self.main:
                        skipped_duplicates += self.intake.record_step(
                            self.step + 1, self.version, self.consumed, trained=False
                        )
                    continue
                outcome = train_step(
                    self.backend,
                    batch,
                    self.algorithm,
                    self.trainer.micro_batch_tokens,
                    self.reference,
                )
                self.step, self.version = self.step + 1, self.version + 1
                self.status.set_phase("syncing")
                synced = await self.sync_weights()
                extra = {
                    "dynamic_sampling_capped": int(capped),
                    "groups_consumed": len(entries) + skipped_entries,
                    "policy_version": self.version,
                    "prompts_admitted": self.admission.admitted,
                    "weight_sync_bytes": synced.num_bytes,
                    "time_weight_sync_pause_s": synced.pause_s,
                    "weight_sync_servers_ejected": self.weights.num_ejected,
                    "weight_sync_servers_caught_up": self.weights.num_caught_up,
                    **{
                        f"time_weight_sync_{name}": seconds
                        for name, seconds in synced.phases_s.items()
                    },
                }
                if self.main and self.step < max_steps:
                    # The slots the new version opens are filled now, not after the drift check,
                    # the step's files and the next step's catch-up: workers start on them
                    # while this step finishes (the bound is the same, only reached sooner; the
                    # record above counts the admissions this step trained under).
                    self.admit()
                if self.trainer.drift_check:
                    mark = time.perf_counter()
                    extra.update(await self.drift(batch))
                    extra["time_drift_check_s"] = time.perf_counter() - mark
                name = "after" if self.step == max_steps else f"step_{self.step:08d}"
                if self.step == max_steps or (interval and self.step % interval == 0):
                    evaluation = await self.evaluate(name)
                    extra.update(evaluation or {})
                    extra.update(self.keep_best(evaluation, name))
                record = None
                if self.main:
                    samples.write(self.step, groups)
                    # Before the checkpoint: a crash between them drops this record on resume.
                    extra["groups_duplicate_skipped"] = skipped_duplicates + (
                        self.intake.record_step(
                            self.step, self.version - 1, self.consumed, trained=True
                        )
                    )
                    metrics = {
                        **step_metrics(
                            batch,
                            outcome,
                            time_waiting_s=waited_s,
                            time_weight_sync_s=synced.total_s,
                        ),
                        **extra,
                    }
                    metrics.update(self.collapse.check(metrics))  # collapse.py: flags
                    record = writer.write(self.step, metrics)
                    result.metrics.append(record)
                    self.status.record_step(record)
                self.uncommitted.extend(entries)
                skipped_entries = skipped_duplicates = 0
                if (
                    self.step % self.trainer.checkpoint_interval_steps == 0
                    or self.step == max_steps
                ):
                    self.status.set_phase("checkpointing")
                    self.checkpoint()
                self.status.set_phase("training" if self.step < max_steps else "done")
                if on_step is not None and record is not None:
                    on_step(record)
        self.status.set_phase("done")
        result.steps, result.policy_version = self.step, self.version
        return result

    async def close(self) -> None:
        await self.pool.close()
        await self.transport.close()
        for closable in (self.prompts, self.groups, self.publisher, self.intake):
            if closable is not None:  # None on ranks other than 0
                closable.close()


def run_training(
    config: AgentRLConfig,
    max_steps: int | None = None,
    *,
    on_step: Callable[[dict], None] | None = None,
    **options: Any,
) -> TrainingResult:
    """Train until `max_steps` (default `trainer.total_steps`) optimizer steps; resumes from the
    latest checkpoint under `<run dir>/checkpoints`. `options`: RLTrainer's keyword arguments.
    Under torchrun, every rank calls it inside `distributed.process_group` (main.py does);
    `on_step` and the status servers run on rank 0."""
    steps = max_steps or config.trainer.total_steps
    if not steps:
        raise ValueError("set trainer.total_steps (or pass max_steps): how long to train")

    async def main() -> TrainingResult:
        trainer = RLTrainer(config, status=board, **options)
        try:
            return await trainer.run(steps, on_step)
        finally:
            await trainer.close()

    # Status (gRPC) and /metrics (HTTP) first: a taken port fails before any work.
    board = StatusBoard(config.run.run_id)
    with start_status_servers(config, board) if is_main_process() else nullcontext():
        return asyncio.run(main())
