"""CUDA graphs that stay valid: the one capture helper, used by the drafting round and the static target.

`GraphSet` is the one place graphs are captured. A graph replays raw addresses, so it is only safe while everything it
reads or writes still lives where it lived at capture. What goes wrong otherwise, and what each set does about it:
- cuBLAS workspaces. PyTorch caches one per (handle, stream) and hands it to every matrix product on that stream,
  captured or not; it drops a stream's entry when a graph captured on that stream is destroyed (pytorch/pytorch#193402)
  and Inductor's CUDA graphs (Transformers' compiled static cache) drop all of them around each recording. Graphs
  captured one after another on `torch.cuda.graph`'s shared default stream thus bake in one workspace, allocated in
  the pool of whichever graph came first; when that pool goes, or the entry is dropped and its memory reused, the
  others write into freed memory (a CUDA "illegal memory access", or silently into whatever reuses it). A set drops
  the cached workspaces before and after each capture, so the workspace its graph uses is allocated during the
  capture, inside the set's pool, and no cache entry is left pointing there for anyone else to take or free.
- memory. Each set has its own pool, shared by its graphs and released with them; warm-ups run eagerly on a side
  stream, captures on a stream of their own.
- destruction during a capture. Destroying a graph while any capture is open is an operation CUDA refuses ("operation
  not permitted when stream is capturing (function reset)") and it invalidates the open capture. Graphs held in a
  reference cycle die whenever Python's cyclic collector next runs, which can be in the middle of a capture. So: a
  capture collects garbage first and keeps the collector off while it runs; owners hold graphs without cycles (see
  `DraftingGraphs`, `StaticTarget`); and a set that dies while a capture is open anywhere in the process has its
  graphs kept until that capture ends (`release_point`).
What a graph reads from outside the set (model weights) must be checked by its owner before each use: see
`tensor_identity`.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any

import torch

from .. import env, notices


def capture_graphs(device: torch.device) -> bool:
    """Whether the fast path captures CUDA graphs on `device`: on CUDA unless $DSPARK_CUDA_GRAPHS=0."""
    return device.type == "cuda" and env.cuda_graphs_enabled()


def drop_cublas_workspaces() -> None:
    """Forget PyTorch's cached cuBLAS workspaces (their memory is freed to the pools it came from), as Inductor does
    around its own captures; see the module docstring."""
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()


def tensor_identity(tensors: Iterable[torch.Tensor | None]) -> tuple:
    """Where and what each tensor is: a graph captured on these tensors may replay only while this is unchanged (a
    model moved or cast since holds new tensors; the old ones may already be freed)."""
    return tuple(None if t is None else (t.data_ptr(), t.dtype, tuple(t.shape)) for t in tensors)


_OPEN = threading.Lock()  # guards the state below
_open = {"captures": 0, "gc_was_enabled": False}  # captures open in this process (any thread)
_parked: list[dict] = []  # graphs of sets that died while a capture was open: destroyed at the next release point


@contextlib.contextmanager
def capture_window() -> Iterator[None]:
    """The frame of one capture: cyclic garbage collected before it (a safe point), the collector off while any
    capture is open, and graphs that die meanwhile kept until the last open capture ends (the release point)."""
    gc.collect()
    with _OPEN:
        if _open["captures"] == 0:
            _open["gc_was_enabled"] = gc.isenabled()
            gc.disable()
        _open["captures"] += 1
    released: list[dict] = []
    try:
        yield
    finally:
        with _OPEN:
            _open["captures"] -= 1
            if _open["captures"] == 0:
                released, _parked[:] = _parked[:], []
                if _open["gc_was_enabled"]:
                    gc.enable()
        released.clear()  # no capture is open: the parked graphs may go


def parked_graphs() -> int:
    """Graphs waiting for the release point (0 whenever no capture is open)."""
    return sum(len(graphs) for graphs in _parked)


class GraphSet:
    """Graphs of one owner, each captured once under a key and replayed; see the module docstring for why each set
    has its own capture stream and memory pool. The outputs a graph returns are its static outputs: valid until the
    next replay of any graph of the set (they share one pool)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.streams: tuple[torch.cuda.Stream, torch.cuda.Stream] | None = None  # (captures, warm-ups): made lazily
        self.pool: Any = None
        self.graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, Any]] = {}

    def __del__(self) -> None:
        with _OPEN:
            if _open["captures"] and self.graphs:
                _parked.append(self.graphs)  # destroyed when the open capture ends, not inside it

    def __contains__(self, key: Hashable) -> bool:
        return key in self.graphs

    def capture(self, key: Hashable, step: Callable[[], Any], warmup: int = 2) -> Any:
        """Run `step` `warmup` times eagerly, then capture one call of it under `key`; returns its static outputs.
        The CUDA random state is restored afterwards, so warm-up and capture draw nothing a seeded run would notice.
        A capture that fails raises, leaving the stream out of capture mode and the set without that key."""
        if self.streams is None:
            self.streams = torch.cuda.Stream(self.device), torch.cuda.Stream(self.device)
            self.pool = torch.cuda.graph_pool_handle()
        stream, side = self.streams
        rng = torch.cuda.get_rng_state(self.device)
        current = torch.cuda.current_stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step()
        current.wait_stream(side)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        stream.wait_stream(current)
        drop_cublas_workspaces()  # the capture allocates its own, in this set's pool
        try:
            with capture_window(), torch.cuda.stream(stream):
                # thread_local: only this thread's unsafe calls break the capture, not another thread's eager work
                graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
                try:
                    outputs = step()
                except BaseException:
                    with contextlib.suppress(Exception):
                        graph.capture_end()  # end the capture, whatever it holds, so the stream is usable again
                    raise
                graph.capture_end()
        finally:
            drop_cublas_workspaces()  # nothing outside this set may hold on to memory of its pool
        current.wait_stream(stream)
        torch.cuda.set_rng_state(rng, self.device)
        self.graphs[key] = (graph, outputs)
        notices.captured()
        return outputs

    def replay(self, key: Hashable) -> Any:
        """Replay the graph captured under `key` on the current stream; returns its static outputs."""
        graph, outputs = self.graphs[key]
        graph.replay()
        return outputs
