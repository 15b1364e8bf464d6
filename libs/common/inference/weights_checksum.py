"""One checksum of a set of named weight tensors, computed the same way by the trainer (over what
it sends) and by a receiver (over what it received), so a receiver can prove it got the bytes.

    weights_checksum({"model.embed_tokens.weight": t, ...}) -> "sha256:<hex>"

sha256 over the tensors in name order, each contributing its name, dtype, shape and raw bytes
(CPU, contiguous). Costs one pass over the bytes (about 1 s per GB here); what is NOT covered:
tensors on an accelerator are copied to CPU first, which a GPU receiver would avoid by
checksumming on the device (not built: the NCCL engine is vLLM's own).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import torch


def update_digest(digest: hashlib._Hash, name: str, tensor: torch.Tensor) -> None:
    """Fold one named tensor into `digest` (the order of calls matters: sort by name)."""
    tensor = tensor.detach().to("cpu").contiguous()
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    # A uint8 view works for every dtype, bfloat16 included (numpy has none); hashing the
    # array's buffer directly avoids a copy of every tensor (tobytes() made one).
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy())


def weights_checksum(
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
) -> str:
    """`sha256:<hex>` of the named tensors (order-independent: sorted by name)."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    digest = hashlib.sha256()
    for name, tensor in sorted(items, key=lambda item: item[0]):
        update_digest(digest, name, tensor)
    return f"sha256:{digest.hexdigest()}"
