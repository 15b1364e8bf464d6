"""Agent-loop episodes against a real `vllm serve` (CPU, tiny local model, the conftest
fixture), the real sandbox service (bubblewrap) and the real search service (BM25 over a small
generated QA world), both in this process on free ports.

A randomly initialised tiny model never writes a tool call by itself, so turns are constrained:
- with vLLM structured outputs (`structured_outputs.regex`) to write a given call or answer. The
  engine still samples the tokens, but its log-probs are then those of the grammar-masked
  distribution (vLLM applies the grammar bitmask before computing them), so these episodes check
  text, mask, tools and limits, not log-probs;
- with `allowed_token_ids` (a sampler restriction applied after raw log-probs are taken) for the
  log-prob check: the recorded log-probs must equal vLLM's scoring of the same tokens.
The loop, the stop strings, the sandbox, the search service and the token accounting are the
real ones."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry
from sandbox_service_helpers import sandbox_server
from transformers import AutoTokenizer
from typer.testing import CliRunner

from agentrl.common.agent.loop import TRUNCATION_NOTE, AgentLoop, EpisodeSettings
from agentrl.common.agent.tools import SandboxTool, SearchTool, ToolBox
from agentrl.common.config import SandboxConfig, SearchConfig
from agentrl.common.grpc_client import NO_RETRY, create_channel
from agentrl.common.inference.pool import InferencePool
from agentrl.common.models import default_corpus, init_tiny_model
from agentrl.common.tool_formats import ParsedCall, get_format
from agentrl.proto.core.v1 import trajectory_pb2
from agentrl.proto.search.v1 import search_pb2, search_pb2_grpc
from agentrl.sandbox.client import SandboxClient
from agentrl.search.cli import data_app, index_app
from agentrl.search.main import start_search_service
from agentrl.search.qa_questions import read_questions

pytestmark = pytest.mark.slow
Finish = trajectory_pb2.FinishReason
LOGPROB_TOLERANCE = 1e-4
CALL = "Let me compute.\n<code>\nprint(6 * 7)\n</code>"
CALL_REGEX = r"Let me compute\.\n<code>\nprint\(6 \* 7\)\n</code>"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny_model(tmp_path_factory.mktemp("model"), default_corpus(500), seed=2)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxClient]:
    with (
        sandbox_server(SandboxConfig(max_concurrency=2)) as grpc_server,
        SandboxClient(grpc_server.address, token=None) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def search_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated QA world of ~200 passages, indexed (BM25) as `qa`."""
    out = tmp_path_factory.mktemp("search-world")
    runner = CliRunner()
    made = runner.invoke(
        data_app,
        ["--seed", "5", "--out", str(out), "--num-passages", "200", "--num-questions", "40"],
    )
    assert made.exit_code == 0, made.output
    indexed = runner.invoke(
        index_app, [str(out / "corpus.jsonl"), "--out", str(out / "index"), "--name", "qa"]
    )
    assert indexed.exit_code == 0, indexed.output
    return out


@pytest.fixture(scope="module")
def search(search_world: Path) -> Iterator[grpc.Channel]:
    """A channel to the real search service over `search_world` (max_query_chars 200)."""
    config = SearchConfig(
        grpc_port=0, http_port=0, index_dir=search_world / "index", max_query_chars=200
    )
    service = start_search_service(config, registry=CollectorRegistry(), token=None)
    with create_channel(service.grpc_address, token=None) as channel:
        yield channel
    service.stop(0)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir)


def prompt_ids(tokenizer, question: str = "What is 6 * 7?") -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer.encode(text, add_special_tokens=False)


def episode(
    server,
    sandbox,
    tokenizer,
    regex: str | None,
    prompt: list[int] | None = None,
    allowed: list[int] | None = None,
    tools: ToolBox | None = None,
    **limits,
):
    constraint = (
        {"structured_outputs": {"regex": regex}} if regex else {"allowed_token_ids": allowed}
    )
    settings = EpisodeSettings(
        sampling={"temperature": 1.0, "seed": 11, "logprobs": 3, **constraint},
        max_tokens_per_turn=64,
        **limits,
    )

    async def body():
        pool = InferencePool([server.url], request_timeout_s=120)
        try:
            loop = AgentLoop(
                pool, tokenizer, tools or ToolBox({"python": SandboxTool(sandbox, 10.0)})
            )
            traj = await loop.run(prompt or prompt_ids(tokenizer), settings, trajectory_id="t")
            scored = await pool.score(list(traj.token_ids))
            return traj, scored
        finally:
            await pool.close()

    return asyncio.run(body())


def test_tool_episode_is_exact_text_with_mask_on_sampled_tokens_only(
    server, sandbox, tokenizer
) -> None:
    prompt = prompt_ids(tokenizer)
    traj, _ = episode(server, sandbox, tokenizer, CALL_REGEX, prompt, max_tool_calls=1)
    # Turn 0 calls the tool; turn 1 calls again, past the budget of one call.
    assert traj.finish_reason == Finish.FINISH_REASON_MAX_TOOL_CALLS
    assert [t.tool_call.status for t in traj.turns] == [
        trajectory_pb2.TOOL_CALL_STATUS_OK,
        trajectory_pb2.TOOL_CALL_STATUS_UNSPECIFIED,
    ]
    first = traj.turns[0]
    assert first.tool_call.tool == "python" and first.tool_call.arguments == "print(6 * 7)"
    assert first.tool_call.output == "42\n" and first.tool_call.latency_s > 0
    observation = "\n<output>\n42\n\n</output>\n"
    expected = tokenizer.decode(prompt) + CALL + observation + CALL
    assert tokenizer.decode(list(traj.token_ids)) == expected
    assert list(traj.token_ids[: len(prompt)]) == prompt and traj.prompt_length == len(prompt)
    assert (
        tokenizer.decode(list(traj.token_ids[first.observation_start : first.observation_end]))
        == observation
    )
    unmasked = {i for i, m in enumerate(traj.loss_mask) if m == 0}
    assert unmasked == set(range(len(prompt))) | set(
        range(first.observation_start, first.observation_end)
    )
    n = len(traj.token_ids)
    assert len(traj.loss_mask) == len(traj.behaviour_logprobs) == len(traj.policy_versions) == n
    for i in range(n):
        if traj.loss_mask[i]:
            # Forced by the grammar: log-prob of the masked distribution, 0 where one token fits.
            assert traj.behaviour_logprobs[i] <= 0 and traj.policy_versions[i] == 0
        else:
            assert traj.behaviour_logprobs[i] == 0.0 and traj.policy_versions[i] == -1
    assert traj.response_text == CALL + observation + CALL and traj.num_tool_calls == 1


def test_recorded_logprobs_equal_vllm_scoring_across_turns(server, sandbox, tokenizer) -> None:
    # Sampled text of a few tokens, ending each turn on </code> with no <code>: a parse error
    # that is shown to the model, so the episode has several turns with observations between.
    allowed = [tokenizer.convert_tokens_to_ids(t) for t in ("</code>", "x", "y", "Ġ")]
    traj, scored = episode(
        server, sandbox, tokenizer, None, allowed=allowed, max_turns=3, max_tool_calls=5
    )
    assert traj.finish_reason == Finish.FINISH_REASON_MAX_TURNS and len(traj.turns) == 3
    # The last turn's call is recorded, not run: no later turn would read its observation.
    assert [t.tool_call.status for t in traj.turns] == [
        trajectory_pb2.TOOL_CALL_STATUS_PARSE_ERROR,
        trajectory_pb2.TOOL_CALL_STATUS_PARSE_ERROR,
        trajectory_pb2.TOOL_CALL_STATUS_UNSPECIFIED,
    ]
    second = traj.turns[1]
    observation = traj.token_ids[second.observation_start : second.observation_end]
    assert "could not parse" in tokenizer.decode(list(observation))
    sampled = [i for i, m in enumerate(traj.loss_mask) if m]
    assert len(sampled) >= 3
    for i in sampled:
        assert abs(traj.behaviour_logprobs[i] - scored[i]) < LOGPROB_TOLERANCE, i


def test_tool_errors_are_observations_and_limits_end_episodes(server, sandbox, tokenizer) -> None:
    failing = r"<code>\n1/0\n</code>"
    traj, _ = episode(server, sandbox, tokenizer, failing, max_turns=2, max_tool_calls=5)
    assert traj.finish_reason == Finish.FINISH_REASON_MAX_TURNS and len(traj.turns) == 2
    assert traj.turns[0].tool_call.status == trajectory_pb2.TOOL_CALL_STATUS_ERROR
    # The second (last) turn's call never reached the sandbox: recorded, no observation.
    last = traj.turns[1]
    assert last.tool_call.arguments == "1/0" and traj.num_tool_calls == 1
    assert last.tool_call.status == trajectory_pb2.TOOL_CALL_STATUS_UNSPECIFIED
    assert last.observation_start == last.observation_end == len(traj.token_ids)
    assert "ZeroDivisionError" in traj.turns[0].tool_call.output
    assert "ZeroDivisionError" in tokenizer.decode(
        list(traj.token_ids[traj.turns[0].observation_start : traj.turns[0].observation_end])
    )

    prompt = prompt_ids(tokenizer)
    traj, _ = episode(
        server, sandbox, tokenizer, CALL_REGEX, prompt, max_total_tokens=len(prompt) + 5
    )
    assert traj.finish_reason == Finish.FINISH_REASON_MAX_TOKENS and traj.truncated
    assert len(traj.token_ids) == len(prompt) + 5

    long_output = r"<code>\nprint\('ab' \* 500\)\n</code>"
    traj, _ = episode(
        server, sandbox, tokenizer, long_output, max_tool_calls=1, max_tool_output_tokens=8
    )
    call = traj.turns[0].tool_call
    assert call.output_truncated and call.output.endswith(TRUNCATION_NOTE)
    shown = call.output.removesuffix(TRUNCATION_NOTE)
    assert "abab" in shown and len(tokenizer.encode(shown)) <= 8
    turn = traj.turns[0]
    assert (
        tokenizer.decode(list(traj.token_ids[turn.observation_start : turn.observation_end]))
        == f"\n<output>\n{call.output}\n</output>\n"
    )


def test_an_answer_ends_the_episode(server, sandbox, tokenizer) -> None:
    traj, _ = episode(server, sandbox, tokenizer, r"The answer is <answer>42</answer>")
    assert traj.finish_reason == Finish.FINISH_REASON_ANSWER
    assert traj.turns[0].stop_reason == "</answer>" and traj.num_tool_calls == 0
    assert traj.response_text == "The answer is <answer>42</answer>"


def retrieve_top(channel: grpc.Channel, query: str) -> search_pb2.Passage:
    stub = search_pb2_grpc.SearchServiceStub(channel)
    return (
        stub.Retrieve(search_pb2.RetrieveRequest(queries=[query], top_k=1)).results[0].passages[0]
    )


def test_search_call_shows_the_retrieved_passage_as_masked_observation(
    server, search, search_world, tokenizer
) -> None:
    # A one-hop question whose supporting passage BM25 ranks first, short enough for one turn.
    question, passage = next(
        (q["question"], top)
        for q in read_questions(search_world / "train.jsonl")
        if q["hops"] == 1
        and len(tokenizer.encode(f"<search>{q['question']}</search>")) < 60
        and (top := retrieve_top(search, q["question"])).id == q["supporting_ids"][0]
    )
    call = f"<search>{question}</search>"
    prompt = prompt_ids(tokenizer, question)
    tools = ToolBox({"search": SearchTool(search, timeout_s=10.0, top_k=1)})
    traj, _ = episode(
        server,
        None,
        tokenizer,
        re.escape(call),
        prompt,
        tools=tools,
        tool_format="search_tags",
        max_tool_calls=1,
        max_tool_output_tokens=400,
    )
    assert traj.finish_reason == Finish.FINISH_REASON_MAX_TOOL_CALLS
    first = traj.turns[0]
    assert first.tool_call.tool == "search" and first.tool_call.arguments == question
    assert first.tool_call.status == trajectory_pb2.TOOL_CALL_STATUS_OK
    assert first.tool_call.latency_s > 0 and not first.tool_call.output_truncated
    assert first.tool_call.output == f"Doc 1(Title: {passage.title}) {passage.text}"
    observation = get_format("search_tags").render_observation(first.tool_call.output)
    obs_ids = list(traj.token_ids[first.observation_start : first.observation_end])
    assert tokenizer.decode(obs_ids) == observation and passage.text in observation
    assert set(traj.loss_mask[first.observation_start : first.observation_end]) == {0}
    assert set(traj.policy_versions[first.observation_start : first.observation_end]) == {-1}
    unmasked = {i for i, m in enumerate(traj.loss_mask) if m == 0}
    assert unmasked == set(range(len(prompt))) | set(
        range(first.observation_start, first.observation_end)
    )
    assert (
        tokenizer.decode(list(traj.token_ids))
        == tokenizer.decode(prompt) + call + observation + call
    )

    # The observation budget cuts a long result, as for every tool.
    traj, _ = episode(
        server,
        None,
        tokenizer,
        re.escape(call),
        prompt,
        tools=tools,
        tool_format="search_tags",
        max_tool_calls=1,
        max_tool_output_tokens=16,
    )
    cut = traj.turns[0].tool_call
    assert cut.status == trajectory_pb2.TOOL_CALL_STATUS_OK and cut.output_truncated
    assert cut.output.endswith(TRUNCATION_NOTE) and cut.output.startswith("Doc 1(Title: ")


def test_search_service_down_is_an_unavailable_observation(server, tokenizer) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with create_channel(f"127.0.0.1:{port}", token=None, retry=NO_RETRY) as channel:
        tools = ToolBox({"search": SearchTool(channel, timeout_s=5.0)})
        traj, _ = episode(
            server,
            None,
            tokenizer,
            r"<search>capital of Krouperburg</search>",
            tools=tools,
            tool_format="search_tags",
            max_turns=2,  # the first turn's call runs; the last turn's is never run
        )
    assert traj.finish_reason == Finish.FINISH_REASON_MAX_TURNS
    call = traj.turns[0].tool_call
    assert call.tool == "search" and call.status == trajectory_pb2.TOOL_CALL_STATUS_UNAVAILABLE
    assert call.output == "search unavailable: UNAVAILABLE" and call.latency_s > 0
    turn = traj.turns[0]
    assert "search unavailable" in tokenizer.decode(
        list(traj.token_ids[turn.observation_start : turn.observation_end])
    )


def test_search_tool_refused_queries_are_errors_the_model_reads(search) -> None:
    tool = SearchTool(search, timeout_s=10.0)
    too_long = asyncio.run(tool.run(ParsedCall("search", "born " * 60), "s"))
    assert too_long.status == trajectory_pb2.TOOL_CALL_STATUS_ERROR
    assert too_long.output.startswith("Error: ") and "200" in too_long.output
    hermes = asyncio.run(tool.run(ParsedCall("search", '{"query": "was born in the year"}'), "s"))
    assert hermes.status == trajectory_pb2.TOOL_CALL_STATUS_OK
    assert hermes.output.count("\nDoc ") == 2  # the service default: 3 passages
