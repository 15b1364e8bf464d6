"""SFT: the episode rendering and its assistant-only mask (checked by decoding), bad
trajectories, learning (a tiny model memorises 8 trajectories), the saved checkpoint, the CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from agentrl.common.config import AgentRLConfig, ModelConfig, RunConfig, SFTConfig, TrainerConfig
from agentrl.trainer.cli import sft_app
from agentrl.trainer.packing import pack_micro_batches, token_logprobs_and_entropy
from agentrl.trainer.rendering import episode_segments, render_observation, tokenize_segments
from agentrl.trainer.sft import build_examples, run_sft, sft_cpu_threads

SYSTEM = "Use Python for arithmetic."


def calculator_trajectory(a: int, b: int, use_tool: bool) -> list[dict[str, str]]:
    question = {"role": "user", "content": f"What is {a} * {b}?"}
    if not use_tool:
        return [
            {"role": "system", "content": SYSTEM},
            question,
            {"role": "assistant", "content": f"The result is <answer>{a * b}</answer>"},
        ]
    return [
        {"role": "system", "content": SYSTEM},
        question,
        {"role": "assistant", "content": f"Let me compute it.\n<code>\nprint({a} * {b})\n</code>"},
        {"role": "tool", "content": f"{a * b}\n"},
        {"role": "assistant", "content": f"The result is <answer>{a * b}</answer>"},
    ]


def write_trajectories(path, count: int = 8, seed: int = 0):
    rng = random.Random(seed)
    rows = [
        calculator_trajectory(rng.randint(10, 999), rng.randint(10, 99), use_tool=i % 4 != 3)
        for i in range(count)
    ]
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint)


def spans(token_ids, mask, value):
    """Contiguous runs of `token_ids` where mask == value."""
    runs, current = [], []
    for token, m in zip(token_ids, mask, strict=True):
        if m == value:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_the_loss_mask_covers_exactly_the_assistant_text(tokenizer):
    messages = calculator_trajectory(123, 45, use_tool=True)
    token_ids, mask = tokenize_segments(
        episode_segments(messages, tokenizer, "code_tags"), tokenizer
    )
    trained = [tokenizer.decode(run) for run in spans(token_ids, mask, 1)]
    assert trained == [messages[2]["content"], messages[4]["content"] + tokenizer.eos_token]
    masked = [tokenizer.decode(run) for run in spans(token_ids, mask, 0)]
    prompt = (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is 123 * 45?"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert masked == [prompt, "\n<output>\n5535\n\n</output>\n"]
    # The sequence is the plain concatenation of the segments (what the agent loop builds).
    assert tokenizer.decode(token_ids) == "".join(
        [
            prompt,
            messages[2]["content"],
            render_observation("5535\n"),
            messages[4]["content"],
            tokenizer.eos_token,
        ]
    )
    plain = episode_segments(messages[1:], tokenizer, "search_tags", prompt_format="plain")
    assert plain[0].text == "What is 123 * 45?\n"
    assert plain[2].text == "\n<information>\n5535\n\n</information>\n"


USER = {"role": "user", "content": "What is 2 + 2?"}
ANSWER = {"role": "assistant", "content": "<answer>4</answer>"}


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([ANSWER], "first message must be system or user"),
        (
            [USER, {"role": "tool", "content": "4"}, ANSWER],
            r"message 1 \(tool\) must follow an assistant",
        ),
        (
            [
                USER,
                {"role": "assistant", "content": "<code>2+2</code>"},
                {"role": "tool", "content": "<output>4</output>"},
                ANSWER,
            ],
            r"message 2 \(tool\) is already wrapped",
        ),
        ([USER, {"role": "assistant", "content": None}], "message 1 has no text content"),
        ([USER, ANSWER, {"role": "user", "content": "and?"}], "message 2 has role 'user'"),
        (
            [
                USER,
                {"role": "assistant", "content": "<code>2+2</code>"},
                {"role": "tool", "content": "4"},
            ],
            "last message must be the assistant's final answer",
        ),
    ],
)
def test_bad_trajectories_are_rejected_with_the_message_index(tokenizer, messages, message):
    with pytest.raises(ValueError, match=message):
        build_examples([messages], tokenizer, "code_tags", "chat_template", 512, "data.jsonl")


def test_long_trajectories_are_dropped_and_counted(tokenizer):
    short = calculator_trajectory(12, 34, use_tool=False)
    long = [short[0], short[1], {"role": "assistant", "content": "1 " * 300}]
    examples, dropped = build_examples([short, long], tokenizer, "code_tags", "chat_template", 200)
    assert len(examples) == 1 and dropped == 1


def test_sft_memorises_trajectories_and_saves_a_checkpoint_that_reproduces_them(
    tiny_checkpoint, tmp_path
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_trajectories(tmp_path / "sft.jsonl")
    config = AgentRLConfig(
        run=RunConfig(output_dir=tmp_path / "run", seed=1),
        model=ModelConfig(path=tiny_checkpoint),
        trainer=TrainerConfig(device="cpu"),
        sft=SFTConfig(
            train_path=data,
            batch_size=8,
            max_steps=40,
            learning_rate=3e-3,
            lr_warmup_steps=3,
            micro_batch_tokens=256,
        ),
    )
    result = run_sft(config)
    assert result.output_dir == tmp_path / "run" / "sft"
    assert result.num_examples == 8 and len(result.losses) == 40
    assert result.losses[-1] < 0.3 * result.losses[0], result.losses
    records = [
        json.loads(line)
        for line in (result.output_dir / "sft_metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records] == list(range(1, 41))

    model = AutoModelForCausalLM.from_pretrained(result.output_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.output_dir)
    examples, _ = build_examples(
        [m["messages"] for m in map(json.loads, data.read_text().splitlines())],
        tokenizer,
        "code_tags",
        "chat_template",
        512,
    )
    micro_batches = pack_micro_batches([e.token_ids for e in examples], 512)
    trained = result.backend.logprobs(micro_batches)
    with torch.no_grad():
        for micro_batch, (expected, _) in zip(micro_batches, trained, strict=True):
            reloaded, _ = token_logprobs_and_entropy(model, micro_batch)
            assert torch.equal(reloaded, expected)


def test_the_sft_command_trains_and_reports(tiny_checkpoint, tmp_path):
    data = write_trajectories(tmp_path / "sft.jsonl", count=4)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"run: {{output_dir: {tmp_path / 'run'}}}\n"
        f"model: {{path: {tiny_checkpoint}}}\n"
        "trainer: {device: cpu}\nsft: {batch_size: 2, learning_rate: 0.001}\n"
    )
    runner = CliRunner()
    result = runner.invoke(
        sft_app,
        [
            "--recipe",
            str(recipe),
            "--data",
            str(data),
            "--output",
            str(tmp_path / "out"),
            "--max-steps",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "SFT done: 2 steps on 4 trajectories" in result.output
    assert {"config.json", "model.safetensors", "tokenizer.json", "sft_metrics.jsonl"} <= {
        p.name for p in (tmp_path / "out").iterdir()
    }
    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "tool", "content": "1"}]}\n')
    result = runner.invoke(
        sft_app, ["--recipe", str(recipe), "--data", str(tmp_path / "bad.jsonl")]
    )
    assert result.exit_code == 1
    assert "first message must be system or user" in result.output


def test_sft_threads_follow_the_sft_setting_then_the_trainers() -> None:
    trainer = TrainerConfig(cpu_threads=1)
    assert sft_cpu_threads(AgentRLConfig(trainer=trainer)) == 1  # as RL, unless told
    assert sft_cpu_threads(AgentRLConfig(trainer=trainer, sft=SFTConfig(cpu_threads=2))) == 2
    assert sft_cpu_threads(AgentRLConfig(trainer=trainer, sft=SFTConfig(cpu_threads=0))) == 0
