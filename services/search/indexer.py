"""`agentrl search index`: one streaming pass over a JSONL corpus builds an index directory.

Layout of an index directory (read-only once built; replicas may share it):

    manifest.json     format, name, version, counts, which retrievers exist, default method
    passages.sqlite   the passages by row / id / doc_id (docstore.py)
    bm25/             bm25s's files: data/indices/indptr .npy (memory-mapped), vocab, params
    dense/dense.faiss optional: MiniLM embeddings in an exact inner-product index

The build happens in a hidden sibling directory that is renamed into place at the end, so a
reader never sees half an index, and a failed build leaves nothing behind. The `version` is a
hash of the passages and the build settings: two builds of the same corpus share it, any
change gives a new one (the service's result cache is keyed by it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from agentrl.search.bm25_index import DEFAULT_B, DEFAULT_K1, BM25Builder
from agentrl.search.corpus import chunked, read_corpus
from agentrl.search.docstore import DocStoreWriter

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Passages held in memory at once while indexing (~10 MB of text for typical passages).
DEFAULT_CHUNK_PASSAGES = 10_000


def count_lines(path: Path) -> int:
    """Lines in a file (the progress bar's total), read in 1 MiB blocks."""
    count = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
    return count


def build_index(
    corpus_path: str | Path,
    out_dir: str | Path,
    *,
    dense: bool = False,
    name: str = "",
    overwrite: bool = False,
    chunk_passages: int = DEFAULT_CHUNK_PASSAGES,
    k1: float = DEFAULT_K1,
    b: float = DEFAULT_B,
    progress: bool = True,
) -> dict:
    """Index `corpus_path` into `out_dir`; returns the manifest written there."""
    corpus_path, out_dir = Path(corpus_path), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(
            f"{out_dir} exists and is not empty; pass --overwrite to replace it "
            "or choose another --out"
        )
    name = name or out_dir.resolve().name
    building = out_dir.parent / f".{out_dir.name}.building-{int(time.time() * 1000)}"
    building.mkdir(parents=True)
    started = time.perf_counter()
    try:
        manifest = _build(corpus_path, building, dense, name, chunk_passages, k1, b, progress)
        manifest["build_seconds"] = round(time.perf_counter() - started, 3)
        (building / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_into_place(building, out_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return manifest


def _build(
    corpus_path: Path,
    work: Path,
    dense: bool,
    name: str,
    chunk_passages: int,
    k1: float,
    b: float,
    progress: bool,
) -> dict:
    from tqdm.auto import tqdm

    passages = read_corpus(corpus_path)  # validates the path before anything heavy loads
    scratch = work / "scratch"
    docstore = DocStoreWriter(work / "passages.sqlite")
    bm25 = BM25Builder(scratch, k1=k1, b=b)
    dense_builder = None
    if dense:
        from agentrl.search.dense_index import DenseBuilder

        dense_builder = DenseBuilder(scratch)
    digest = hashlib.sha256(f"format={FORMAT_VERSION};k1={k1};b={b};dense={dense}".encode())
    bar = tqdm(
        total=count_lines(corpus_path),
        unit="passage",
        desc=f"indexing {corpus_path.name}",
        disable=not progress,
        smoothing=0.1,
    )
    with bar:
        for chunk in chunked(passages, chunk_passages):
            docstore.add(chunk)
            # Titles are part of what is searched: entity pages are found by their names.
            texts = [p.search_text for p in chunk]
            bm25.add(texts)
            if dense_builder is not None:
                dense_builder.add(texts)
            for p in chunk:
                fields = [p.id, p.doc_id, p.title, p.text]
                if p.url or p.contents_head is not None:
                    # Only then, so a corpus without them keeps the version it always had.
                    fields += [p.url, p.contents_head]
                digest.update(json.dumps(fields).encode())
            bar.update(len(chunk))
    docstore.close()
    bm25_stats = bm25.finish(work / "bm25")
    dense_stats = dense_builder.finish(work / "dense") if dense_builder is not None else None
    shutil.rmtree(scratch, ignore_errors=True)
    return {
        "format": FORMAT_VERSION,
        "name": name,
        "version": digest.hexdigest()[:16],
        "created_unix_s": round(time.time(), 3),
        "corpus": str(corpus_path),
        "num_passages": docstore.num_rows,
        "bm25": {**bm25_stats, "k1": k1, "b": b, "method": "lucene"},
        "dense": dense_stats,
        "methods": ["bm25", "dense", "hybrid"] if dense else ["bm25"],
        "default_method": "hybrid" if dense else "bm25",
    }


def _swap_into_place(building: Path, out_dir: Path) -> None:
    """Rename the finished build to `out_dir`; an old index there is removed after the swap."""
    if not out_dir.exists():
        building.rename(out_dir)
        return
    retired = out_dir.parent / f".{out_dir.name}.retired-{int(time.time() * 1000)}"
    out_dir.rename(retired)
    building.rename(out_dir)
    # Servers holding the old files memory-mapped keep reading them until they reload.
    shutil.rmtree(retired, ignore_errors=True)


def read_manifest(index_dir: str | Path) -> dict:
    """The manifest of an index directory; ValueError saying how to make one if it is missing."""
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(
            f"{index_dir} is not a search index (no {MANIFEST}); build one with "
            "`agentrl search index CORPUS.jsonl --out DIR`"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{index_dir}: index format {manifest.get('format')} is not "
            f"{FORMAT_VERSION}; rebuild it with this version of agentrl"
        )
    return manifest
