"""The agent loop: one episode of generate -> tool -> generate ..., token-in/token-out.

    loop = AgentLoop(pool, tokenizer, ToolBox({"python": SandboxTool(sandbox)}))
    trajectory = await loop.run(prompt_ids, EpisodeSettings.from_task(task), trajectory_id="t1")

Invariants (ARCHITECTURE.md, "Rollout in detail"):
- `trajectory.token_ids` is exactly what the model saw and produced: each turn sends the ids so
  far and appends the sampled ids as returned; an observation is tokenised on its own and
  appended. Earlier turns are never re-rendered or re-tokenised.
- loss mask 1 exactly on sampled tokens; prompt and observation tokens have mask 0, log-prob 0
  and policy version -1; sampled tokens carry vLLM's log-prob and the version that sampled them.
- Episodes end on an answer (`</answer>` or EOS), a limit (turns, tool calls, total tokens, the
  turn's max_tokens) or an error; tool errors are observations, not episode errors.
- The call that ends the last allowed turn (`max_turns`), or comes past `max_tool_calls`, is
  parsed and recorded in its turn (status UNSPECIFIED, no output, no observation tokens) but
  never run, nor counted in `num_tool_calls`: no later turn could read its observation (verl's
  tool agent loop also stops at its turn limit before running calls; Search-R1's last turn
  has no search).
- A turn aborted by a pause (`pause(mode="abort")`) keeps its sampled tokens and continues from
  them after the resume, at most MAX_ABORT_RESUMES times.
- One tool session per episode: every call of the episode runs with the same `session_id`
  (unique per run of `resume`), so the python interpreter keeps its state from call to call;
  the session is closed when the episode ends, however it ends (answer, limit, error, abort,
  cancellation). An ARPO branch (a prefix from another episode) gets its own session, into
  which the prefix's earlier calls of stateful tools are replayed first (their outputs are
  already in the prefix; the replay only rebuilds the state).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

from agentrl.common.agent.tools import ToolBox
from agentrl.common.inference.pool import GenerationResult, InferenceError, InferencePool
from agentrl.common.tool_formats import ParsedCall, get_format
from agentrl.proto.core.v1 import task_pb2, trajectory_pb2

TurnHook = Callable[[trajectory_pb2.Trajectory, GenerationResult], None]
# A turn aborted more often than this (pauses in a row) ends the episode as ABORTED.
MAX_ABORT_RESUMES = 8
TRUNCATION_NOTE = "\n... (output truncated)"

# Session ids are the trajectory id (cut to this length) plus a random suffix: unique even when
# two evaluations of the same data share a sandbox; the sandbox allows 128 characters.
SESSION_ID_PREFIX_CHARS = 100
# Statuses of a call that reached its tool (an ARPO branch replays these into its session).
RAN_STATUSES = (
    trajectory_pb2.TOOL_CALL_STATUS_OK,
    trajectory_pb2.TOOL_CALL_STATUS_ERROR,
    trajectory_pb2.TOOL_CALL_STATUS_TIMEOUT,
)

# Tool calls per episode when a task gives no limit: as many as the default turns (8), so by
# default the turn limit binds (at most 7 calls run: the last turn's call is not run).
DEFAULT_MAX_TOOL_CALLS = 8
# EpisodeLimits.max_tool_calls of a task that allows no tool call at all (0 there means "the
# default", as for every limit); `agentrl eval --max-tool-calls 0` sends it.
NO_TOOL_CALLS = -1


@dataclass
class EpisodeSettings:
    """How every turn of an episode is sampled and when the episode stops."""

    sampling: dict[str, Any] = field(default_factory=lambda: {"temperature": 1.0})
    """vLLM SamplingParams fields for every turn (temperature, top_p, top_k, seed, stop,
    logprobs = top-k count, allowed_token_ids, structured_outputs...); max_tokens is set per turn."""
    max_tokens_per_turn: int = 512
    max_turns: int = 8
    max_tool_calls: int = 4
    max_total_tokens: int = 4096
    """Prompt + responses + observations."""
    max_tool_output_tokens: int = 256
    """Tool output beyond this many tokens is cut (and flagged) before it is shown."""
    tool_format: str = "code_tags"

    def __post_init__(self) -> None:
        for name in (
            "max_tokens_per_turn",
            "max_turns",
            "max_total_tokens",
            "max_tool_output_tokens",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_tool_calls < 0:
            raise ValueError(f"max_tool_calls must be >= 0, got {self.max_tool_calls}")
        get_format(self.tool_format)

    @classmethod
    def from_task(
        cls, task: task_pb2.RolloutTask, default_format: str = "code_tags", **extra_sampling: Any
    ) -> EpisodeSettings:
        s, limits = task.sampling, task.limits
        sampling: dict[str, Any] = {
            "temperature": s.temperature or 1.0,
            "top_p": s.top_p or 1.0,
            "top_k": s.top_k if s.top_k > 0 else -1,
            "logprobs": max(s.num_logprobs, 0),
            "stop": list(s.stop),
        }
        if s.seed:
            sampling["seed"] = s.seed
        sampling.update(extra_sampling)
        return cls(
            sampling=sampling,
            max_tokens_per_turn=s.max_tokens_per_turn or 512,
            max_turns=limits.max_turns or 8,
            # 0 means "the default" for every limit, as elsewhere in the task; a task that
            # allows no tool call says so with NO_TOOL_CALLS (any negative value).
            max_tool_calls=0
            if limits.max_tool_calls < 0
            else limits.max_tool_calls or DEFAULT_MAX_TOOL_CALLS,
            max_total_tokens=limits.max_total_tokens or 4096,
            max_tool_output_tokens=limits.max_tool_output_tokens or 256,
            tool_format=task.tool_format or default_format,
        )


@dataclass
class Session:
    """The tool session of one episode: its id, and whether a stateful tool was called in it."""

    trajectory_id: str
    opened: bool = False

    @cached_property
    def id(self) -> str:
        """Drawn at the first tool call (an episode without one never needs it)."""
        return f"{self.trajectory_id[:SESSION_ID_PREFIX_CHARS]}-{uuid.uuid4().hex[:12]}"


# Where transformers' own `decode` and `_decode` live for fast tokenizers: with both stock, and
# no clean-up of spaces, `decode` is the Rust tokenizer's decode behind a layer of Python.
STOCK_DECODE_MODULES = (
    "transformers.tokenization_utils_base",
    "transformers.tokenization_utils_tokenizers",  # transformers 5
    "transformers.tokenization_utils_fast",  # transformers 4
)


def text_decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """`tokenizer.decode` of a list of token ids, for the loop's per-turn decodes. A stock fast
    tokenizer that cleans up no spaces decodes with its Rust tokenizer directly, as
    transformers' decode ends up doing (the same text), without transformers' per-call Python
    (input conversion, batch check, kwargs): 12 of the loop's 52 us per 64-token episode went
    there (docs/rollout.md). Any other tokenizer keeps its own decode."""
    cls = type(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    stock = all(
        getattr(getattr(cls, name, None), "__module__", None) in STOCK_DECODE_MODULES
        for name in ("decode", "_decode")
    )
    if backend is None or not stock or getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return tokenizer.decode
    return partial(backend.decode, skip_special_tokens=False)


def record_unrun(turn: trajectory_pb2.Turn, call: ParsedCall) -> None:
    """Record a call an episode limit refused: what the model wrote, status UNSPECIFIED (every
    reader takes it as "never ran": metrics, tool-error counts, ARPO's replay), no output."""
    turn.tool_call.CopyFrom(
        trajectory_pb2.ToolCall(
            tool=call.tool,
            arguments=call.arguments,
            status=trajectory_pb2.TOOL_CALL_STATUS_UNSPECIFIED,
        )
    )


class AgentLoop:
    def __init__(self, pool: InferencePool, tokenizer: Any, tools: ToolBox) -> None:
        self.pool, self.tokenizer, self.tools = pool, tokenizer, tools
        self.decode = text_decoder(tokenizer)

    def truncate_output(self, text: str, budget_tokens: int) -> tuple[str, bool]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= budget_tokens:
            return text, False
        return self.decode(ids[:budget_tokens]) + TRUNCATION_NOTE, True

    async def run(
        self,
        prompt_token_ids: list[int],
        settings: EpisodeSettings,
        *,
        trajectory_id: str,
        task_id: str = "",
        sample_index: int = 0,
        on_turn: TurnHook | None = None,
    ) -> trajectory_pb2.Trajectory:
        traj = trajectory_pb2.Trajectory(
            trajectory_id=trajectory_id,
            task_id=task_id,
            sample_index=sample_index,
            prompt_length=len(prompt_token_ids),
        )
        self._append(traj, prompt_token_ids)
        return await self.resume(traj, settings, on_turn=on_turn)

    async def resume(
        self,
        traj: trajectory_pb2.Trajectory,
        settings: EpisodeSettings,
        *,
        on_turn: TurnHook | None = None,
    ) -> trajectory_pb2.Trajectory:
        """Continue the episode `traj` holds (its prompt, or an ARPO branch's shared prefix
        ending after a tool observation). `on_turn(traj, result)` runs after each turn's tokens
        are appended (ARPO reads the turn's top-k log-probs there)."""
        started = time.monotonic()
        fmt = get_format(settings.tool_format)
        stop = fmt.stop_strings + [
            s for s in settings.sampling.get("stop", []) if s not in fmt.stop_strings
        ]
        session = Session(traj.trajectory_id)
        # The episode's token ids as a list, kept equal to traj.token_ids: each turn sends it
        # as it is, instead of copying the protobuf field out once per turn.
        ids = list(traj.token_ids)
        try:
            await self._replay(traj, session)
            finish = await self._turns(traj, ids, settings, fmt, stop, on_turn, session)
        except InferenceError as exc:
            finish, traj.error = trajectory_pb2.FINISH_REASON_ERROR, str(exc)
            if traj.turns and traj.turns[-1].response_end < traj.turns[-1].response_start:
                # The failed turn keeps what it sampled before the error, and no observation.
                last = traj.turns[-1]
                last.response_end = last.observation_start = last.observation_end = len(
                    traj.token_ids
                )
        finally:
            self.pool.release(traj.trajectory_id)
            if session.opened:  # shielded: a cancelled episode still frees its interpreter
                await asyncio.shield(self.tools.close_session(session.id))
        traj.finish_reason = finish
        traj.truncated = finish == trajectory_pb2.FINISH_REASON_MAX_TOKENS
        traj.response_text = self.decode(ids[traj.prompt_length :])
        traj.wall_time_s = time.monotonic() - started
        return traj

    async def _replay(self, traj, session: Session) -> None:
        """Rebuild a branch prefix's tool state: re-run its earlier calls of stateful tools in
        this episode's session (outputs discarded: the prefix already shows them)."""
        for turn in traj.turns:
            call = turn.tool_call
            ran = turn.HasField("tool_call") and call.status in RAN_STATUSES
            if ran and self.tools.stateful(call.tool):
                session.opened = True
                await self.tools.run(ParsedCall(call.tool, call.arguments), session.id)

    async def _turns(
        self,
        traj,
        ids: list[int],
        settings: EpisodeSettings,
        fmt,
        stop: list[str],
        on_turn: TurnHook | None,
        session: Session,
    ) -> int:
        while True:
            if len(traj.turns) >= settings.max_turns:
                return trajectory_pb2.FINISH_REASON_MAX_TURNS
            budget = settings.max_total_tokens - len(ids)
            if budget <= 0:
                return trajectory_pb2.FINISH_REASON_MAX_TOKENS
            turn = traj.turns.add(index=len(traj.turns), response_start=len(ids))
            out = await self._generate_turn(
                traj, ids, settings, stop, min(settings.max_tokens_per_turn, budget)
            )
            turn.response_end = turn.observation_start = turn.observation_end = len(ids)
            turn.stop_reason = (
                str(out.stop_reason) if out.stop_reason is not None else out.finish_reason
            )
            if on_turn is not None:
                on_turn(traj, out)
            if out.finish_reason == "abort":
                return trajectory_pb2.FINISH_REASON_ABORTED
            if not fmt.ends_with_call(out.stop_reason):
                return (
                    trajectory_pb2.FINISH_REASON_MAX_TOKENS
                    if out.finish_reason == "length"
                    else trajectory_pb2.FINISH_REASON_ANSWER
                )
            turn_text = self.decode(ids[turn.response_start :])
            call = fmt.parse(turn_text)
            if traj.num_tool_calls >= settings.max_tool_calls:
                record_unrun(turn, call)
                return trajectory_pb2.FINISH_REASON_MAX_TOOL_CALLS
            if len(traj.turns) >= settings.max_turns:
                # No turn follows to read the observation: running the call would only cost a
                # sandbox or search run.
                record_unrun(turn, call)
                return trajectory_pb2.FINISH_REASON_MAX_TURNS
            fits = await self._observe(traj, ids, turn, call, settings, fmt, session)
            if not fits:
                return trajectory_pb2.FINISH_REASON_MAX_TOKENS

    async def _generate_turn(
        self, traj, ids: list[int], settings: EpisodeSettings, stop: list[str], max_tokens: int
    ):
        """Sample one turn and append it; an aborted request resumes from its tokens."""
        for _ in range(MAX_ABORT_RESUMES + 1):
            sampling = {
                **settings.sampling,
                "stop": stop,
                "max_tokens": max_tokens,
                "include_stop_str_in_output": True,
                "n": 1,
                "logprobs": settings.sampling.get("logprobs", 0),
            }
            out = await self.pool.generate(traj.trajectory_id, ids, sampling)
            ids.extend(out.token_ids)
            self._append(
                traj, out.token_ids, out.logprobs or [0.0] * len(out.token_ids), out.policy_versions
            )
            max_tokens -= len(out.token_ids)
            if out.finish_reason != "abort" or max_tokens <= 0:
                return out
        return out

    async def _observe(
        self,
        traj,
        ids: list[int],
        turn,
        call: ParsedCall,
        settings: EpisodeSettings,
        fmt,
        session: Session,
    ) -> bool:
        """Run the call, append its observation (mask 0); False when it did not fit."""
        session.opened = session.opened or self.tools.stateful(call.tool)
        outcome = await self.tools.run(call, session.id)
        traj.num_tool_calls += 1
        shown, truncated = self.truncate_output(outcome.output, settings.max_tool_output_tokens)
        obs_ids = self.tokenizer.encode(fmt.render_observation(shown), add_special_tokens=False)
        room = settings.max_total_tokens - len(ids)
        turn.observation_start = len(ids)
        ids.extend(obs_ids[:room])
        self._append(traj, obs_ids[:room])
        turn.observation_end = len(ids)
        turn.tool_call.CopyFrom(
            trajectory_pb2.ToolCall(
                tool=call.tool,
                arguments=call.arguments,
                status=outcome.status,
                output=shown,
                output_truncated=truncated or len(obs_ids) > room,
                latency_s=outcome.latency_s,
            )
        )
        return len(obs_ids) < room

    @staticmethod
    def _append(traj, token_ids, logprobs=None, versions=None) -> None:
        """Sampled tokens come with log-probs (mask 1); prompt/observation tokens without."""
        traj.token_ids.extend(token_ids)
        if logprobs is None:
            traj.behaviour_logprobs.extend([0.0] * len(token_ids))
            traj.loss_mask.extend([0] * len(token_ids))
            traj.policy_versions.extend([-1] * len(token_ids))
        else:
            traj.behaviour_logprobs.extend(logprobs)
            traj.loss_mask.extend([1] * len(token_ids))
            traj.policy_versions.extend(versions)
