"""The tiny local model: a tokenizer that round-trips text with one id per tool tag, and a Qwen3
checkpoint that transformers loads and generates from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from agentrl.common import models
from agentrl.common.model_cli import model_app


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.init_tiny_model(tmp_path_factory.mktemp("tiny"), models.default_corpus(500))


def test_saved_model_loads_and_generates(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "qwen3" and model.config.vocab_size == len(tokenizer)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 3 * 4?"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = torch.tensor([tokenizer.encode(prompt)])
    out = model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=True)
    assert out.shape == (1, ids.shape[1] + 12)


@pytest.mark.parametrize("tag", models.TOOL_TAGS + models.SPECIAL_TOKENS)
def test_every_tag_is_one_token_in_any_context(model_dir: Path, tag: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    (tag_id,) = tokenizer.encode(tag)
    for text in (f"x{tag}\n", f"print(1){tag}", f" {tag}>"):
        assert tag_id in tokenizer.encode(text), text


def test_text_round_trips_and_pieces_concatenate(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pieces = [
        "<|im_start|>user\nWhat is 12*7? é ✓<|im_end|>\n",
        "<code>\nprint(12*7)\n</code>",
        "<output>\n84\n</output>\n",
        "So <answer>84</answer><|im_end|>",
    ]
    whole = "".join(pieces)
    ids = tokenizer.encode(whole)
    assert tokenizer.decode(ids) == whole
    # Observations are tokenised alone and appended: decoding the concatenation gives the text.
    joined = [i for piece in pieces for i in tokenizer.encode(piece)]
    assert tokenizer.decode(joined) == whole


def test_unknown_preset_and_empty_corpus_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        models.init_tiny_model(tmp_path, ["a b c"], preset="huge")
    with pytest.raises(ValueError, match="texts is empty"):
        models.init_tiny_model(tmp_path, [])


def test_cli_init_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "What is 2 + 2?", "answer": "4"}\n' * 50)
    result = CliRunner().invoke(
        model_app, ["init", "--out", str(tmp_path / "m"), "--data", str(data)]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "m").decode(
            AutoTokenizer.from_pretrained(tmp_path / "m").encode("What is 2 + 2?")
        )
        == "What is 2 + 2?"
    )
