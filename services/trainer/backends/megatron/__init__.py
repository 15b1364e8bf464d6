"""The `megatron` backend: a megatron-core GPTModel trained behind the same interface as the
torch backend, with Hugging Face checkpoints converted in and out (convert.py), the model and
its forward (model.py), the CPU accommodations (cpu.py) and the verbs (backend.py)."""
