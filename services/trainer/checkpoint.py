"""Resumable checkpoints: everything a run needs to continue exactly where it stopped.

One checkpoint is a directory `<root>/step_<step:08d>/` holding

    backend.pt           model, optimizer and schedule (TrainerBackend.state_dict; torch.save)
    rng.json             python `random`, numpy's global generator, torch CPU (and CUDA) states
    training_state.json  step, policy version, data position (EpochOrder.state_dict), opaque
                         stream offsets (e.g. Redis stream ids) and any extra fields

Atomic: the files are written and fsynced into `<root>/.partial-step_...-<pid>`, then the
directory is renamed into place, so a kill mid-save leaves the previous checkpoint as the latest
and at most a `.partial-*` directory (ignored, removed by the next save). Only
the last `keep_last` checkpoints are kept.

Beside them, `BestCheckpoint` keeps the best EVALUATED weights of the run in `<run dir>/best/`:
a Hugging Face checkpoint directory (what `model.path`, `agentrl eval` and vLLM load) plus
`best.json` (`step`, `policy_version`, `eval_avg_at_k`, `eval_pass_at_k`, `eval_file`). The
run offers it every evaluation (before the first step, every `trainer.eval_interval_steps`,
after the last); it is replaced only when the held-out avg@k is strictly higher (ties keep the
earlier step), written to a partial directory and renamed into place. `best/` is for using
the model, not for resuming (no optimizer state). Which evaluation the report's "after"
describes, and where `best/` stands, the report says (report.py).

Resuming gives the same next batch and bit-identical losses on CPU (tests/unit/trainer/
test_checkpoint.py). Under FSDP2 every rank takes part in gathering the state; rank 0 writes,
and its RNG states are the ones saved; `load` reads the files on every rank (the run directory
must be visible to all of them). `backend.pt` holds full tensors keyed by parameter name
whatever the parallelism, so a checkpoint written at one world size resumes at any other
(tests/integration/test_fsdp2.py). Not covered: GPU kernels that are nondeterministic
themselves (atomics in some backward kernels) can still make GPU runs differ after resume.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from agentrl.trainer.backends.interface import TrainerBackend
from agentrl.trainer.shutdown import uninterrupted

STEP_PREFIX = "step_"
PARTIAL_PREFIX = ".partial-"
BEST_DIR = "best"
BEST_FILE = "best.json"


@dataclass
class TrainingState:
    """The driver's side of a checkpoint (the backend's side is its state_dict)."""

    step: int
    policy_version: int
    data_position: dict[str, int] = field(default_factory=dict)
    stream_offsets: dict[str, Any] = field(default_factory=dict)
    """Opaque to the checkpoint: whatever the driver needs to re-read its streams (JSON)."""
    extra: dict[str, Any] = field(default_factory=dict)


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG the trainer draws from, as JSON-serialisable values."""
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": _listify(random.getstate()),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _listify(value: Any) -> Any:
    return [_listify(v) for v in value] if isinstance(value, tuple | list) else value


def _write(path: Path, write) -> None:
    with path.open("wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


class CheckpointManager:
    """Saves, finds and restores checkpoints under one root directory."""

    def __init__(self, root: str | Path, keep_last: int = 3) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [
            p
            for p in self.root.iterdir()
            if p.is_dir()
            and p.name.startswith(STEP_PREFIX)
            and p.name[len(STEP_PREFIX) :].isdigit()
        ]
        return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX) :]))

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save(self, backend: TrainerBackend, state: TrainingState) -> Path | None:
        """Write a checkpoint of `backend` and `state`; its path (None on ranks other than 0)."""
        backend_state = backend.state_dict()  # collective under FSDP2: every rank calls it
        if not backend.is_main_process():
            return None
        with uninterrupted():  # a SIGTERM now stops the trainer once the files are written
            return self._write_checkpoint(backend_state, state)

    def _write_checkpoint(self, backend_state: dict[str, Any], state: TrainingState) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{STEP_PREFIX}{state.step:08d}"
        partial = self.root / f"{PARTIAL_PREFIX}{name}-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        _write(partial / "backend.pt", lambda f: torch.save(backend_state, f))
        _write(partial / "rng.json", lambda f: f.write(json.dumps(capture_rng_state()).encode()))
        _write(
            partial / "training_state.json",
            lambda f: f.write(json.dumps(asdict(state), indent=2).encode()),
        )
        final = self.root / name
        if final.exists():  # the same step saved again (e.g. after a resume): replace it
            retired = self.root / f"{PARTIAL_PREFIX}retired-{name}-{os.getpid()}"
            final.rename(retired)
            partial.rename(final)
            shutil.rmtree(retired)
        else:
            partial.rename(final)
        self._prune()
        return final

    def _prune(self) -> None:
        for old in self.checkpoints()[: -self.keep_last]:
            shutil.rmtree(old)
        # One writer per root (rank 0 of one run): any other partial is from a killed save.
        for leftover in self.root.glob(f"{PARTIAL_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def load(
        self, backend: TrainerBackend, path: str | Path | None = None, restore_rng: bool = True
    ) -> TrainingState:
        """Restore `backend` (and the global RNGs) from `path`, default the latest checkpoint.
        Every rank calls it (restoring sharded state is collective under FSDP2)."""
        if path is None:
            path = self.latest()
            if path is None:
                raise ValueError(f"no checkpoint under {self.root}; start without resuming")
        path = Path(path)
        if not (path / "training_state.json").is_file():
            raise ValueError(f"{path} is not a complete checkpoint (no training_state.json)")
        # weights_only: a checkpoint is data; never unpickle arbitrary objects from disk.
        backend.load_state_dict(
            torch.load(path / "backend.pt", map_location="cpu", weights_only=True)
        )
        if restore_rng:
            restore_rng_state(json.loads((path / "rng.json").read_text()))
        return TrainingState(**json.loads((path / "training_state.json").read_text()))


class BestCheckpoint:
    """The best evaluated weights of a run, by held-out avg@k, in `<run dir>/best/`."""

    def __init__(self, run_dir: str | Path) -> None:
        self.directory = Path(run_dir) / BEST_DIR

    def record(self) -> dict[str, Any] | None:
        """`best.json` of the current best, or None when no evaluation was kept yet."""
        path = self.directory / BEST_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def is_better(self, avg_at_k: float) -> bool:
        current = self.record()
        return current is None or avg_at_k > current["eval_avg_at_k"]

    def save(self, backend: TrainerBackend, record: dict[str, Any]) -> None:
        """Write `backend`'s weights and `record` as the new best (every rank calls it:
        gathering the weights is collective under FSDP2; rank 0 writes)."""
        with uninterrupted():  # a SIGTERM now stops the trainer once the files are written
            self._write_best(backend, record)

    def _write_best(self, backend: TrainerBackend, record: dict[str, Any]) -> None:
        partial = self.directory.parent / f"{PARTIAL_PREFIX}{BEST_DIR}-{os.getpid()}"
        if backend.is_main_process():
            shutil.rmtree(partial, ignore_errors=True)
        backend.save_pretrained(partial)
        if not backend.is_main_process():
            return
        _write(partial / BEST_FILE, lambda f: f.write(json.dumps(record, indent=2).encode()))
        retired = self.directory.parent / f"{PARTIAL_PREFIX}retired-{BEST_DIR}-{os.getpid()}"
        if self.directory.exists():
            self.directory.rename(retired)
        partial.rename(self.directory)
        shutil.rmtree(retired, ignore_errors=True)
