"""vLLM's four-phase weight transfer over torch.distributed gloo (TCP): the CPU stand-in for
vLLM's NCCL engine, registered through vllm_plugin.py as backend `agentrl_gloo`.

    trainer (rank 0)  --one gloo group per server-->  that server's worker(s) (rank 1..)

Phases (vLLM 0.32 routes of `vllm serve` with VLLM_SERVER_DEV_MODE=1, each a collective_rpc to
every worker of the server; the caller pauses generation only around phase 4):
1. POST /init_weight_transfer_engine {"init_info": GlooWeightTransferInitInfo}: the trainer
   opens a TCPStore and a ProcessGroupGloo as rank 0, the worker joins with rank
   `rank_offset + dp_rank * world_size_per_dp + rank` (as the NCCL engine); `master_address`
   is an IPv4 address of the trainer that the servers reach, and each side binds gloo to its
   interface on that route. Once per server; again after any failed or discarded update (the
   group is dropped then, on both sides). Init also drops anything staged.
2. POST /start_weight_update: the worker clears its staging area.
3. POST /update_weights, twice:
   a. {"update_info": GlooWeightTransferUpdateInfo}: names, dtype names and shapes in Hugging
      Face checkpoint naming, and the `weights_checksum` of the payload. The worker validates
      them, starts a background thread that receives the payload into a CPU staging buffer,
      and answers at once: the engine goes on generating in its own thread while the trainer
      broadcasts (every tensor, in name order, 64-byte aligned, in one flat byte buffer,
      `chunk_size_bytes` per broadcast). The thread hashes each tensor as soon as its bytes
      are in.
   b. {"update_info": {"wait": true}}: blocks until the receive ended (at most the group
      timeout plus RECEIVE_GRACE_S) and answers with its outcome: a dead or stalled trainer,
      a timeout or a checksum mismatch is this reply's HTTP 500 ("Call to collective_rpc
      method failed: ... <cause>"). Only now is the payload staged. The engine does not step
      during this call (collective_rpc runs between steps), which costs about the hashing of
      the last chunk.
   {"discard": true} instead drops what is staged, and a receive still in flight with it (the
   worker drops the group: the trainer re-initialises).
4. POST /finish_weight_update: a staged, verified payload goes through vLLM's layerwise reload
   (`initialize_layerwise_reload`, `model.load_weights`, `finalize_layerwise_reload`, as the
   NCCL engine), so name mapping, qkv/gate_up fusing and casting are vLLM's. While a receive
   was started but not waited for, finish refuses (HTTP 500, nothing loaded, the session
   stays open for the wait or a discard); after a discard it loads nothing and closes the
   session.

Invariants a caller can rely on:
- Until phase 4 the served weights are untouched: the receive writes only into the staging
  buffer, so a transfer that stalls, dies or arrives corrupted fails the wait and the server
  keeps serving what it had (vLLM closes the session after that error; the group is dropped).
- The gloo group is used by one thread at a time: the receive thread from 3a until it ends,
  the RPC thread (init, shutdown) only when no receive runs; a receive that is given up
  (discard, a timed-out wait, init, shutdown) takes the group with it and shuts it down when
  its thread ends, so a later group never sees a stale receive.
- Every receive and send has a timeout (`timeout_s`, default DEFAULT_TIMEOUT_S, sent in the
  init info), so a dead peer costs at most that long.
- One group per server: a dead server breaks only its own group.
- `GlooWeightSender` updates a pool all-or-nothing: finish runs only when every server's wait
  reported a verified staged copy; otherwise the survivors discard it and keep serving the
  previous weights.
- A trainer that dies between start and finish leaves the server's vLLM session open (and a
  receive until its timeout): vLLM refuses every later start until a /finish_weight_update. The
  next trainer's init drops that receive and anything staged, so its sender, refused once,
  sends that finish (it loads nothing) and starts again (found by the fault suite: a trainer
  SIGKILLed mid-sync, and the restarted one ejected the only server).

What this does NOT cover: pausing and resuming generation, version labels and the prefix cache
(control.py's, around phase 4); GPUs (vLLM's own `nccl` engine); trainer ranks other than 0
(rank 0 holds the full state dict); a load_weights error in
phase 4 (names the model does not know), which can leave layers that got new tensors mixed with
old ones; the CPU the receive and hashing take from generation on the same cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

import httpx
import torch
from torch.distributed import BroadcastOptions, PrefixStore, ProcessGroupGloo, TCPStore
from vllm.distributed.weight_transfer.base import (
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    WeightSource,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

from agentrl.common.inference import vllm_plugin
from agentrl.common.inference.control import CONTROL_TIMEOUT_S, ControlError
from agentrl.common.inference.weights_checksum import update_digest, weights_checksum

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.config.weight_transfer import WeightTransferConfig

# A peer that has not answered a collective within this long is taken for dead. It bounds the
# rendezvous and each chunk's broadcast: 64 MiB crosses a LAN in well under a second, so a minute
# is only ever reached by a stalled or dead peer. Set per trainer in the init info.
DEFAULT_TIMEOUT_S = 60.0
# Bytes per broadcast: one chunk is one gloo operation and one timeout; the tiny model is one.
DEFAULT_CHUNK_SIZE_BYTES = 64 << 20
# Every tensor starts at a multiple of this in the flat buffer, so any dtype can view it in place.
ALIGN_BYTES = 64
# A worker's wait gives its receive this long beyond the group timeout, so that a stalled
# receive reports its own gloo timeout (which names the chunk) before the wait gives up on it.
RECEIVE_GRACE_S = 5.0
# The phase that ControlError names for update_weights {"wait": true}.
WAIT_PHASE = "update_weights (wait)"
# vLLM's refusal of a start while another session is open (its worker, vllm/v1/worker).
STALE_SESSION = "weight update is already active"


# ---- wire format (both sides) ----------------------------------------------------------------
def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if isinstance(dtype, torch.dtype):
        return dtype
    raise ValueError(f"unknown dtype {name!r} in update_info.dtype_names")


def layout(dtypes: list[torch.dtype], shapes: list[list[int]]) -> tuple[list[int], int]:
    """Byte offset of each tensor in the flat buffer, and the buffer's size."""
    offsets, total = [], 0
    for dtype, shape in zip(dtypes, shapes, strict=True):
        offsets.append(total)
        num_bytes = dtype.itemsize * int(torch.Size(shape).numel())
        total += -(-num_bytes // ALIGN_BYTES) * ALIGN_BYTES
    return offsets, total


def unpack(
    flat: torch.Tensor, names: list[str], dtypes: list[torch.dtype], shapes: list[list[int]]
) -> list[tuple[str, torch.Tensor]]:
    """Views of the flat buffer as the named tensors (no copy)."""
    offsets, total = layout(dtypes, shapes)
    assert flat.numel() == total, (flat.numel(), total)
    views = []
    for name, dtype, shape, offset in zip(names, dtypes, shapes, offsets, strict=True):
        num_bytes = dtype.itemsize * int(torch.Size(shape).numel())
        views.append((name, flat[offset : offset + num_bytes].view(dtype).view(shape)))
    return views


def chunk_bounds(total: int, chunk_size_bytes: int) -> list[tuple[int, int]]:
    return [
        (start, min(start + chunk_size_bytes, total)) for start in range(0, total, chunk_size_bytes)
    ]


@dataclass(frozen=True)
class PackedWeights:
    """A state dict laid out for the wire, with its checksum (computed once per update)."""

    names: list[str]
    dtypes: list[torch.dtype]
    shapes: list[list[int]]
    flat: torch.Tensor
    checksum: str

    @classmethod
    def pack(
        cls, weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]
    ) -> PackedWeights:
        items = list(weights.items() if isinstance(weights, Mapping) else weights)
        # In name order, the order of weights_checksum: the receiver hashes as bytes arrive.
        items.sort(key=lambda item: item[0])
        if not items:
            raise ValueError("no weights to send: the state dict is empty")
        names = [name for name, _ in items]
        dtypes = [tensor.dtype for _, tensor in items]
        shapes = [list(tensor.shape) for _, tensor in items]
        _, total = layout(dtypes, shapes)
        flat = torch.zeros(total, dtype=torch.uint8)  # zero padding: the bytes are deterministic
        views = unpack(flat, names, dtypes, shapes)
        for (_, view), (_, tensor) in zip(views, items, strict=True):
            view.copy_(tensor.detach())
        return cls(names, dtypes, shapes, flat, weights_checksum(views))

    @property
    def num_bytes(self) -> int:
        return self.flat.numel()

    def update_info(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "dtype_names": [dtype_name(d) for d in self.dtypes],
            "shapes": self.shapes,
            "checksum": self.checksum,
        }


# ---- the process group (both sides) ----------------------------------------------------------
def local_address_towards(address: str) -> str:
    """The local interface address that routes to `address` (what gloo must bind to)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((address, 9))  # UDP connect sends nothing; it only picks the route
        return probe.getsockname()[0]


def open_group(
    master_address: str,
    master_port: int,
    rank: int,
    world_size: int,
    timeout_s: float,
    store: TCPStore | None = None,
) -> tuple[TCPStore, ProcessGroupGloo]:
    """A gloo group of its own, outside torch.distributed's default group (vLLM owns that):
    a TCPStore (rank 0 hosts it) and a ProcessGroupGloo built on it directly."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if store is None:
        store = TCPStore(
            master_address,
            master_port,
            world_size,
            rank == 0,
            timeout=timeout,
            wait_for_workers=False,
        )
    options = ProcessGroupGloo._Options()
    options._timeout = timeout
    options._devices = [
        ProcessGroupGloo.create_device(hostname=local_address_towards(master_address))
    ]
    return store, ProcessGroupGloo(PrefixStore("agentrl_gloo", store), rank, world_size, options)


def broadcast_from_trainer(group: ProcessGroupGloo, tensor: torch.Tensor) -> None:
    options = BroadcastOptions()
    options.rootRank, options.rootTensor = 0, 0
    group.broadcast([tensor], options).wait()  # raises on the group's timeout or a lost peer


# ---- worker side (inside vLLM) ---------------------------------------------------------------
@dataclass(kw_only=True)
class GlooWeightTransferInitInfo(WeightTransferInitInfo):
    """Body of /init_weight_transfer_engine's `init_info` (NCCL's fields, plus the timeout)."""

    master_address: str
    master_port: int
    rank_offset: int = 1
    world_size: int
    timeout_s: float = DEFAULT_TIMEOUT_S
    chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.chunk_size_bytes <= 0 or self.world_size < 2:
            raise ValueError(
                f"init_info needs timeout_s > 0, chunk_size_bytes > 0 and "
                f"world_size >= 2, got {self}"
            )


@dataclass
class GlooWeightTransferUpdateInfo(WeightTransferUpdateInfo):
    """Body of /update_weights' `update_info`, one of three: the payload's metadata (starts the
    receive), `wait` (its outcome) or `discard`."""

    names: list[str] = field(default_factory=list)
    dtype_names: list[str] = field(default_factory=list)
    shapes: list[list[int]] = field(default_factory=list)
    checksum: str = ""
    wait: bool = False
    discard: bool = False

    def __post_init__(self) -> None:
        if self.wait or self.discard:
            if (self.wait and self.discard) or self.names or self.checksum:
                raise ValueError(
                    "update_info is one of: the metadata (names, dtype_names, "
                    'shapes, checksum), {"wait": true} or {"discard": true}'
                )
            return
        if not self.names or not self.checksum:
            raise ValueError(
                "update_info needs names, dtype_names, shapes and checksum "
                "(or wait: true, or discard: true)"
            )
        if not len(self.names) == len(self.dtype_names) == len(self.shapes):
            raise ValueError(
                f"update_info lists differ in length: {len(self.names)} names, "
                f"{len(self.dtype_names)} dtype_names, {len(self.shapes)} shapes"
            )


class Receive:
    """One payload in flight on the worker: a thread fills the staging buffer from the group
    chunk by chunk and hashes each tensor as soon as its bytes are in (in name order, as
    `weights_checksum` does; `PackedWeights` lays tensors out in that order), so that after the
    last chunk only its own tensors are left to hash.

    The thread owns the group while it runs. `abandon()` gives the group up for good: whichever
    ends last, the thread or `abandon()`, shuts it down, so no two threads ever use it at once.
    """

    def __init__(
        self,
        group: ProcessGroupGloo,
        info: GlooWeightTransferUpdateInfo,
        init_info: GlooWeightTransferInitInfo,
    ) -> None:
        self.group, self.checksum = group, info.checksum
        self.timeout_s, self.chunk_size_bytes = init_info.timeout_s, init_info.chunk_size_bytes
        dtypes = [parse_dtype(name) for name in info.dtype_names]  # bad metadata fails here
        self.offsets, total = layout(dtypes, info.shapes)
        self.flat = torch.empty(total, dtype=torch.uint8)
        self.views = unpack(self.flat, info.names, dtypes, info.shapes)
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._done = self._abandoned = False
        self.thread = threading.Thread(target=self._run, name="agentrl-gloo-receive", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._receive()
        except Exception as exc:  # noqa: BLE001 - any failure is the wait's to report
            self.error = exc
        finally:
            with self._lock:
                self._done, abandoned = True, self._abandoned
            if abandoned:
                self.group.shutdown()

    def _receive(self) -> None:
        ends = [
            offset + view.numel() * view.element_size()
            for offset, (_, view) in zip(self.offsets, self.views, strict=True)
        ]
        order = sorted(range(len(self.views)), key=lambda index: self.views[index][0])
        digest, num_hashed = hashlib.sha256(), 0
        bounds = chunk_bounds(self.flat.numel(), self.chunk_size_bytes)
        for index, (start, end) in enumerate(bounds):
            if self._abandoned:
                return
            try:
                broadcast_from_trainer(self.group, self.flat[start:end])
            except RuntimeError as exc:
                raise RuntimeError(
                    f"gloo receive of chunk {index + 1}/{len(bounds)} failed "
                    f"(timeout {self.timeout_s:.0f} s): {exc}"
                ) from exc
            while num_hashed < len(order) and ends[order[num_hashed]] <= end:
                update_digest(digest, *self.views[order[num_hashed]])
                num_hashed += 1
        checksum = f"sha256:{digest.hexdigest()}"  # weights_checksum's format
        if checksum != self.checksum:
            raise ValueError(
                f"checksum mismatch: received {checksum}, the trainer sent {self.checksum}"
            )

    def result(self) -> list[tuple[str, torch.Tensor]]:
        """The verified payload once the receive ended, or its error. Waits at most the group
        timeout plus RECEIVE_GRACE_S (a stalled receive ends on its own gloo timeout first)."""
        self.thread.join(self.timeout_s + RECEIVE_GRACE_S)
        if self.thread.is_alive():
            raise TimeoutError(
                f"the receive was still running {self.timeout_s:.0f} s + "
                f"{RECEIVE_GRACE_S:.0f} s after the wait began (trainer too slow "
                "or stalled)"
            )
        if self.error is not None:
            raise self.error
        return self.views

    def abandon(self) -> None:
        """Stop caring about this receive; its group is shut down now or when the thread ends."""
        with self._lock:
            self._abandoned, done = True, self._done
        if done:
            self.group.shutdown()


class GlooWeightTransferEngine(
    WeightTransferEngine[GlooWeightTransferInitInfo, GlooWeightTransferUpdateInfo]
):
    """Receiver: update_weights starts a background receive into a staging buffer, its `wait`
    stages the verified payload, finish_weight_update loads it (see the module docstring)."""

    init_info_cls = GlooWeightTransferInitInfo
    update_info_cls = GlooWeightTransferUpdateInfo

    def __init__(
        self,
        config: WeightTransferConfig,
        vllm_config: VllmConfig,
        device: torch.device,
        model: torch.nn.Module,
    ) -> None:
        super().__init__(config, vllm_config, device, model)
        self.init_info: GlooWeightTransferInitInfo | None = None
        self.store: TCPStore | None = None
        self.group: ProcessGroupGloo | None = None
        self.receive: Receive | None = None
        """The receive started by the last update_weights, until its wait or discard."""
        self.staged: list[tuple[str, torch.Tensor]] = []
        """Verified tensors, waiting for finish_weight_update."""

    def init_transfer_engine(self, init_info: GlooWeightTransferInitInfo) -> None:
        self.shutdown()  # a trainer that re-initialises replaces the old group
        self.staged = []
        parallel = self.parallel_config
        rank = (
            init_info.rank_offset
            + parallel.data_parallel_index * parallel.world_size
            + parallel.rank
        )
        self.store, self.group = open_group(
            init_info.master_address,
            init_info.master_port,
            rank,
            init_info.world_size,
            init_info.timeout_s,
        )
        self.init_info = init_info

    def start_weight_update(self) -> None:
        # vLLM opens no session while one is open, and a receive lives only inside a session.
        assert self.receive is None, "a receive outlived its weight-update session"
        self.staged = []

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # Not the base class's: it would synchronize an accelerator; nothing is on one here.
        try:
            self.receive_weights(self.parse_update_info(update_info))
        except BaseException:
            # The trainer's bytes may be in flight or half read: drop the group so that no later
            # update reads this one's leftovers (the trainer re-initialises), and what was staged.
            # vLLM closes the session after an error here.
            self.staged = []
            self.shutdown()
            raise

    def receive_weights(self, update_info: GlooWeightTransferUpdateInfo) -> None:
        if update_info.discard:
            # A receive in flight may be half read: its group goes with it (the trainer drops
            # its side after a discard too and re-initialises).
            self.staged = []
            self.shutdown()
        elif update_info.wait:
            self.wait_for_receive()
        else:
            self.start_receive(update_info)

    def start_receive(self, info: GlooWeightTransferUpdateInfo) -> None:
        """Returns once the receive runs; the model is not touched, generation goes on."""
        if self.group is None or self.init_info is None:
            raise RuntimeError(
                "gloo weight transfer is not initialised (or its group was "
                "dropped after a failed update): POST /init_weight_transfer_engine"
            )
        if self.receive is not None:
            raise RuntimeError(
                "an update is already being received: POST /update_weights "
                '{"update_info": {"wait": true}} before sending another'
            )
        self.receive = Receive(self.group, info, self.init_info)

    def wait_for_receive(self) -> None:
        """Blocks until the receive ended; stages its payload if the checksum matched."""
        if self.receive is None:
            raise RuntimeError(
                "no update is being received: POST /update_weights with the update's metadata first"
            )
        views = self.receive.result()  # raises: update_weights drops the receive and group
        self.receive = None
        self.staged.extend(views)

    def finish_weight_update(self) -> None:
        if self.receive is not None:
            raise RuntimeError(
                "finish_weight_update before the update was verified: POST "
                '/update_weights {"update_info": {"wait": true}} first (or '
                '{"discard": true}); nothing was loaded'
            )
        if not self.staged:
            return  # discarded, or nothing sent: the model keeps its weights
        from vllm.model_executor.model_loader.mtp_validation import (
            disable_mtp_completeness_check,
        )
        from vllm.model_executor.model_loader.reload import (
            finalize_layerwise_reload,
            initialize_layerwise_reload,
        )

        staged, self.staged = self.staged, []
        with disable_mtp_completeness_check():
            initialize_layerwise_reload(self.model)
            try:
                self.model.load_weights(iter(staged))
            finally:
                # Layers that got nothing are put back as they were, whatever happened.
                finalize_layerwise_reload(self.model, self.model_config)

    def shutdown(self) -> None:
        receive, self.receive = self.receive, None
        if receive is not None:
            receive.abandon()  # the group is the receive's to shut down
        elif self.group is not None:
            self.group.shutdown()
        self.group, self.store, self.init_info = None, None, None


# ---- trainer side ----------------------------------------------------------------------------
class HTTPWeightTransferClient:
    """vLLM's `VLLMWeightSyncClient` over HTTP for one server; failures raise `ControlError`
    with the server's URL, the phase and vLLM's error message."""

    def __init__(self, url: str, timeout_s: float = CONTROL_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.http = httpx.Client(timeout=timeout_s)

    def call(
        self,
        method: str,
        route: str,
        timeout_s: float | None = None,
        phase: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """One request to `route`; errors name `phase` (the route unless given)."""
        timeout_s, phase = timeout_s or self.timeout_s, phase or route
        try:
            response = self.http.request(method, f"{self.url}/{route}", timeout=timeout_s, **kwargs)
        except httpx.TimeoutException:
            raise ControlError(
                self.url, phase, f"no answer within {timeout_s:.0f} s (server stalled or dead)"
            ) from None
        except httpx.HTTPError as exc:
            raise ControlError(self.url, phase, f"{type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            # After an error reply uvicorn resets the connection (an exception in the app, no
            # `Connection: close`): a fresh pool, or the next call dies on the stale one.
            self.http.close()
            self.http = httpx.Client(timeout=self.timeout_s)
            raise ControlError(
                self.url, phase, f"HTTP {response.status_code}: {response.text[:1000]}"
            )
        return response.json() if response.content else None

    def world_size(self) -> int:
        """Ranks of the server's workers (TP * PP * DP)."""
        return int(self.call("GET", "get_world_size")["world_size"])

    def init_weight_transfer_engine(
        self, init_info: dict[str, Any], timeout_s: float | None = None
    ) -> None:
        self.call("POST", "init_weight_transfer_engine", timeout_s, json={"init_info": init_info})

    def start_weight_update(self) -> None:
        self.call("POST", "start_weight_update")

    def update_weights(self, update_info: dict[str, Any], timeout_s: float | None = None) -> None:
        self.call("POST", "update_weights", timeout_s, json={"update_info": update_info})

    def wait_weight_update(self, timeout_s: float | None = None) -> None:
        """update_weights {"wait": true}: returns once the server staged a verified payload."""
        self.call(
            "POST",
            "update_weights",
            timeout_s,
            phase=WAIT_PHASE,
            json={"update_info": {"wait": True}},
        )

    def finish_weight_update(
        self, weight_version: str | None = None, timeout_s: float | None = None
    ) -> None:
        body = {"weight_version": weight_version} if weight_version is not None else None
        self.call("POST", "finish_weight_update", timeout_s, json=body)

    def close(self) -> None:
        self.http.close()


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    """Trainer-side init info (vLLM's `TrainerInitInfo`): where rank 0 listens, and the wire
    parameters the worker is told at the handshake. `master_port` 0 picks a free port."""

    backend: ClassVar[str] = vllm_plugin.BACKEND_NAME

    master_address: str
    world_size: int
    master_port: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S
    chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """Rank 0 of one server's group: `start`, `update`, then `finish` or `discard` (the
    phases, for a pool); `send_weights` is vLLM's whole round trip over `trainer_init`'s source."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(
        self,
        *,
        client: HTTPWeightTransferClient,
        init_info: GlooTrainerInitInfo,
        source: WeightSource | None = None,
    ) -> None:
        super().__init__(client=client, source=source)
        self.client: HTTPWeightTransferClient = client
        self.init_info = init_info
        self.store: TCPStore | None = None
        self.group: ProcessGroupGloo | None = None

    @classmethod
    def trainer_init(
        cls,
        init_info: GlooTrainerInitInfo,
        *,
        client: HTTPWeightTransferClient,
        source: WeightSource | None = None,
    ) -> Self:
        if not init_info.is_sender:
            raise ValueError("only trainer rank 0 sends over gloo; other ranks have no group")
        engine = cls(client=client, init_info=init_info, source=source)
        engine.store = TCPStore(
            init_info.master_address,
            init_info.master_port,
            init_info.world_size,
            True,
            timeout=datetime.timedelta(seconds=init_info.timeout_s),
            wait_for_workers=False,
        )
        worker_init_info = GlooWeightTransferInitInfo(
            master_address=init_info.master_address,
            master_port=engine.store.port,
            world_size=init_info.world_size,
            timeout_s=init_info.timeout_s,
            chunk_size_bytes=init_info.chunk_size_bytes,
        )
        # The workers block in init until every rank has joined: the request runs beside ours.
        with ThreadPoolExecutor(max_workers=1) as executor:
            future = executor.submit(
                client.init_weight_transfer_engine,
                dataclasses.asdict(worker_init_info),
                init_info.timeout_s + CONTROL_TIMEOUT_S,
            )
            try:
                _, engine.group = open_group(
                    init_info.master_address,
                    engine.store.port,
                    0,
                    init_info.world_size,
                    init_info.timeout_s,
                    store=engine.store,
                )
            except RuntimeError as exc:
                future.result()  # the server's own reason, when it has one, comes first
                raise ControlError(
                    client.url, "init_weight_transfer_engine", f"gloo rendezvous failed: {exc}"
                ) from None
            future.result()
        return engine

    def start(self) -> None:
        self.client.start_weight_update()

    def update(self, packed: PackedWeights) -> None:
        """update_weights with the metadata (the server starts receiving in the background and
        answers at once), then the broadcast of `packed`; the server generates meanwhile.
        On return every byte is sent; `wait` says whether the server staged them."""
        assert self.group is not None, "trainer_init() first"
        self.client.update_weights(packed.update_info())
        try:
            for start, end in chunk_bounds(packed.num_bytes, self.init_info.chunk_size_bytes):
                broadcast_from_trainer(self.group, packed.flat[start:end])
        except RuntimeError as exc:
            # The server's own answer names the cause better (its receive's error): it wins.
            self.wait(timeout_s=min(self.init_info.timeout_s, CONTROL_TIMEOUT_S))
            with contextlib.suppress(ControlError):
                self.discard()  # it staged the payload all the same: load nothing
            raise ControlError(
                self.client.url, "update_weights", f"gloo send failed: {exc}"
            ) from None

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until the server received the whole payload and verified its checksum (staged,
        not loaded); `ControlError` with its reason otherwise (the server dropped the group)."""
        self.client.wait_weight_update(
            timeout_s or self.init_info.timeout_s + RECEIVE_GRACE_S + CONTROL_TIMEOUT_S
        )

    def finish(self, weight_version: str | None = None) -> None:
        """Load what `wait` verified on the server (the served weights change here)."""
        self.client.finish_weight_update(weight_version, timeout_s=self.init_info.timeout_s)

    def discard(self) -> None:
        """Drop what `update` sent (in flight or staged) and close the server's session; the
        weights stay, the server drops its group (shut ours down too: `shutdown`)."""
        self.client.update_weights({"discard": True})
        self.client.finish_weight_update()

    def send_weights(self) -> None:
        if self.source is None:
            raise ValueError("send_weights() replays the source given to trainer_init; none was")
        packed = PackedWeights.pack(iter(self.source))
        self.start()
        self.update(packed)
        self.wait()
        self.finish()

    def shutdown(self) -> None:
        if self.group is not None:
            self.group.shutdown()
        self.group, self.store = None, None


@dataclass(frozen=True)
class SendResult:
    num_bytes: int
    """Bytes sent to each server (the aligned flat buffer)."""
    checksum: str
    phases_s: dict[str, float]
    """Seconds per phase: pack (layout + checksum), start+update (the broadcast), wait (every
    server verified its staged copy), finish (the load)."""
    total_s: float


class GlooWeightSender:
    """The trainer's side of the `agentrl_gloo` backend for a pool of servers: one group per
    server (rank 0 here), an update verified on every server before any of them loads it.

        sender = GlooWeightSender(urls)        # groups open on first use (or connect())
        sender.send(model.state_dict())        # start, update, wait, finish on every server

    or phase by phase: `start()`, `update(weights)` (the servers keep generating while they
    receive), `wait()` (every server staged a verified copy), `finish()` (each loads it; the
    caller pauses generation around this one), or `discard()` instead of `finish()`. Failures
    raise `ControlError` naming the first failed server and phase; if an update fails anywhere,
    every other server discards it. A server that failed or discarded loses its group; the next
    start re-initialises it. `concurrent` talks to all servers at once (a thread each) instead
    of one after another.
    """

    def __init__(
        self,
        urls: list[str],
        *,
        master_address: str = "127.0.0.1",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES,
        concurrent: bool = True,
    ) -> None:
        if not urls:
            raise ValueError("GlooWeightSender needs at least one server URL")
        if timeout_s <= 0 or chunk_size_bytes <= 0:
            raise ValueError(
                f"timeout_s and chunk_size_bytes must be > 0, got {timeout_s} and "
                f"{chunk_size_bytes}"
            )
        vllm_plugin.register()
        self.urls = [url.rstrip("/") for url in urls]
        self.master_address, self.timeout_s = master_address, timeout_s
        self.chunk_size_bytes, self.concurrent = chunk_size_bytes, concurrent
        self.engines: dict[str, GlooTrainerWeightTransferEngine] = {}
        self.started: list[str] = []
        """Servers with an open session (between start and finish or discard)."""
        self.unstarted: set[str] = set()
        """Servers connected by this sender that no start of ours has reached since: a session
        open there is a dead trainer's (our init emptied it), closed by the next start."""
        self.session = ""
        """How far the open session got: "started", "sent" (update), "staged" (wait)."""

    def connect(self) -> None:
        """/init_weight_transfer_engine on every server that has no group yet."""
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        def init(url: str) -> GlooTrainerWeightTransferEngine:
            client = HTTPWeightTransferClient(url)
            try:
                init_info = GlooTrainerInitInfo(
                    rank=0,
                    master_address=self.master_address,
                    world_size=1 + client.world_size(),
                    timeout_s=self.timeout_s,
                    chunk_size_bytes=self.chunk_size_bytes,
                )
                return WeightTransferTrainerFactory.trainer_init(init_info, client=client)
            except BaseException:
                client.close()
                raise

        engines, failures = self._each([u for u in self.urls if u not in self.engines], init)
        self.engines.update(engines)
        self.unstarted.update(engines)
        self._raise(failures, "no server was sent anything")

    def start(self) -> None:
        """/start_weight_update on every server (connecting first where needed). A session
        left open (by a caller that gave up half-way) is discarded first."""
        self.discard()
        self.connect()

        def start(url: str) -> None:
            engine = self.engines[url]
            try:
                engine.start()
            except ControlError as exc:
                if url not in self.unstarted or STALE_SESSION not in str(exc):
                    raise
                # A dead trainer's session: our init emptied it, so this finish loads nothing.
                engine.client.finish_weight_update()
                engine.start()
            self.unstarted.discard(url)

        started, failures = self._each(self.urls, start)
        self.started, self.session = list(started), "started"
        if failures:
            for url in failures:  # a restarted server has no group: the next start re-inits
                self._drop(url)
            self._discard(self.started)
            self._raise(failures, "no server changed its weights")

    def update(self, weights: Mapping[str, torch.Tensor] | PackedWeights) -> None:
        """/update_weights on every started server, then its broadcast; the servers receive in
        the background and keep generating."""
        self._expect("started", "update() needs an open session: call start() first")
        packed = weights if isinstance(weights, PackedWeights) else PackedWeights.pack(weights)
        self._on_each("sent", lambda url: self.engines[url].update(packed))

    def wait(self) -> None:
        """/update_weights {"wait": true} on every server: each verified its staged copy."""
        self._expect("sent", "wait() follows update()")
        self._on_each("staged", lambda url: self.engines[url].wait())

    def finish(self, weight_version: str | None = None) -> None:
        """/finish_weight_update on every started server: each loads its staged update."""
        self._expect(
            "staged",
            "finish() loads only an update every server verified: call "
            "start(), update() and wait() first",
        )
        urls, self.started, self.session = self.started, [], ""
        _, failures = self._each(urls, lambda url: self.engines[url].finish(weight_version))
        for url in failures:
            self._drop(url)
        self._raise(failures, "the other servers loaded the update")

    def discard(self) -> None:
        """Close the open session on every server without loading anything (no-op if none)."""
        self._discard(self.started)

    def send(self, weights: Mapping[str, torch.Tensor]) -> SendResult:
        """Pack once, then start, update, wait and finish on every server."""
        begin = time.perf_counter()
        packed = PackedWeights.pack(weights)
        packed_at = time.perf_counter()
        self.start()
        self.update(packed)
        sent_at = time.perf_counter()
        self.wait()
        staged_at = time.perf_counter()
        self.finish()
        end = time.perf_counter()
        return SendResult(
            packed.num_bytes,
            packed.checksum,
            {
                "pack": packed_at - begin,
                "start+update": sent_at - packed_at,
                "wait": staged_at - sent_at,
                "finish": end - staged_at,
            },
            end - begin,
        )

    def close(self) -> None:
        """Drop every group (the servers keep serving; a later start re-initialises)."""
        for url in list(self.engines):
            self._drop(url)
        self.started, self.session = [], ""

    def _expect(self, session: str, message: str) -> None:
        if self.session != session or not self.started:
            raise RuntimeError(f"{message} (session: {self.session or 'none'})")

    def _on_each(self, session: str, action: Callable[[str], Any]) -> None:
        """`action` on every started server; if any fails, the others discard (all-or-nothing)."""
        done, failures = self._each(self.started, action)
        if failures:
            for url in failures:
                self._drop(url)  # the server dropped its side already
            survivors = [url for url in self.started if url in done]
            self._discard(survivors)
            self._raise(
                failures,
                "no server loaded the update"
                + (f" ({', '.join(survivors)} discarded it)" if survivors else ""),
            )
        self.session = session

    def _each(
        self, urls: list[str], action: Callable[[str], Any]
    ) -> tuple[dict[str, Any], dict[str, Exception]]:
        """`action(url)` for every url (at once when `concurrent`): results and failures."""

        def run(url: str) -> tuple[bool, Any]:
            try:
                return True, action(url)
            except (RuntimeError, ValueError, OSError) as exc:  # ControlError, gloo, store
                return False, exc

        if self.concurrent and len(urls) > 1:
            with ThreadPoolExecutor(max_workers=len(urls)) as executor:
                outcomes = list(executor.map(run, urls))
        else:
            outcomes = [run(url) for url in urls]
        results = {url: value for url, (ok, value) in zip(urls, outcomes) if ok}
        failures = {url: value for url, (ok, value) in zip(urls, outcomes) if not ok}
        return results, failures

    def _discard(self, urls: list[str]) -> None:
        """Close the sessions on `urls` without loading. Every one of them loses its group: the
        server drops its side on a discard (a receive may have been in flight), and one failing
        here is broken or dead anyway."""
        self._each(urls, lambda url: self.engines[url].discard())
        for url in urls:
            self._drop(url)
        self.started, self.session = [], ""

    def drop(self, url: str) -> None:
        """Forget `url`'s group (a server that left the pool; one that comes back connects
        afresh)."""
        self._drop(url)

    def _drop(self, url: str) -> None:
        self.unstarted.discard(url)
        engine = self.engines.pop(url, None)
        if engine is not None:
            engine.shutdown()
            engine.client.close()

    @staticmethod
    def _raise(failures: dict[str, Exception], outcome: str) -> None:
        if not failures:
            return
        (url, first), *others = failures.items()
        phase = getattr(first, "phase", "weight transfer")
        detail = str(first).removeprefix(f"{phase} on {url}: ")
        also = f" (also failed: {'; '.join(str(exc) for _, exc in others)})" if others else ""
        raise ControlError(url, phase, f"{detail}{also}; {outcome}") from first
