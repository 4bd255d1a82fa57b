"""CUDA graphs that stay valid: one capture helper, and the DSpark drafting round replayed from graphs.

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
What a graph reads from outside the set (model weights) must be checked by its owner before each use: see
`tensor_identity`.

On a GPU, a drafting round is ~150 small kernel launches (context fusion, the draft layers, the LM-head rows, the
Markov kernel) that each cost more host time than device time. `DraftingGraphs` captures it as two graphs — append
the newly verified positions to the context cache; draft a block from it — so a round costs two replays and three
small copies. What makes the round capturable: the context cache is allocated up front and never moves; what changes
from round to round (the cache length, the anchor, the new features) is copied into fixed device buffers before each
replay; the draft layers attend to the whole allocation under a mask of the valid positions; an append always
processes `max_new` rows (rows past the newly verified ones are junk that the next append overwrites and the mask
hides); and the Markov kernel's grid barrier gets its own counter, zeroed inside the graph.

Self-contained on purpose: this file travels with every checkpoint as Hub remote code.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from .markov_kernel import resolve_backend

if TYPE_CHECKING:
    from .generation import DraftedBlock, DSparkCandidateGenerator

CUDA_GRAPHS_ENV = "DSPARK_CUDA_GRAPHS"  # "0": no CUDA graphs anywhere (drafting and verification run eagerly)
_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """One `[dspark]` line on stderr per process and kind of event: a fallback is worth knowing, not worth a flood."""
    if key not in _WARNED:
        _WARNED.add(key)
        print(f"[dspark] {message}", file=sys.stderr, flush=True)


def capture_graphs(device: torch.device) -> bool:
    """Whether the fast path captures CUDA graphs on `device`: on CUDA unless $DSPARK_CUDA_GRAPHS=0."""
    return device.type == "cuda" and os.environ.get(CUDA_GRAPHS_ENV, "1") != "0"


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


class GraphSet:
    """Graphs of one owner, each captured once under a key and replayed; see the module docstring for why each set
    has its own capture stream and memory pool. The outputs a graph returns are its static outputs: valid until the
    next replay of any graph of the set (they share one pool)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.streams: tuple[torch.cuda.Stream, torch.cuda.Stream] | None = None  # (captures, warm-ups): made lazily
        self.pool: Any = None
        self.graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, Any]] = {}

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
            with torch.cuda.stream(stream):
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
        return outputs

    def replay(self, key: Hashable) -> Any:
        """Replay the graph captured under `key` on the current stream; returns its static outputs."""
        graph, outputs = self.graphs[key]
        graph.replay()
        return outputs


class DraftingGraphs:
    """The two graphs of one generator, with their fixed input buffers and the context cache they write.

    `capture=False` runs the same fixed-shape steps eagerly (no CUDA needed; with the PyTorch loop, or the kernel
    under the Triton interpreter): the tests compare that path with the ordinary one on the CPU, and on a GPU the
    replays with both.
    """

    def __init__(self, generator: DSparkCandidateGenerator, max_length: int, max_new: int, capture: bool = True):
        drafter = generator.drafter
        config = drafter.config
        device, gamma = drafter.device, config.block_size
        self.generator, self.max_new = generator, max_new
        self.cache = drafter.new_context_cache(max_length + max_new)  # junk rows of the last append still fit
        width = len(config.target_layer_ids) * config.hidden_size
        self.features = torch.zeros(1, max_new, width, dtype=drafter.dtype, device=device)
        self.start = torch.zeros((), dtype=torch.long, device=device)  # cache length before an append
        self.length = torch.zeros((), dtype=torch.long, device=device)  # cache length when drafting
        self.anchor = torch.zeros(1, dtype=torch.long, device=device)
        # the kernel's own grid-barrier counter (the shared one's host-side count cannot be replayed)
        self.barrier = torch.zeros(1, dtype=torch.int32, device=device) if resolve_backend(device) == "triton" else None
        self.offsets = torch.arange(gamma, device=device)
        self.slots = torch.arange(self.cache.capacity, device=device)
        self.block_visible = torch.ones(gamma, dtype=torch.bool, device=device)
        self.graphs: GraphSet | None = None
        self.drafted: DraftedBlock | None = None
        if capture:
            graphs = GraphSet(device)
            graphs.capture("append", self._append_step)
            self.drafted = graphs.capture("draft", self._draft_step)
            self.cache.length = 0  # the warm-up wrote junk only
            self.graphs = graphs

    def _append_step(self) -> None:
        drafter = self.generator.drafter
        drafter.append_context(self.cache, drafter.fuse_features(self.features), start=self.start)

    def _draft_step(self) -> DraftedBlock:
        visible = torch.cat([self.slots < self.length, self.block_visible])[None, None, None]
        context = list(zip(self.cache.keys, self.cache.values, strict=True))
        positions = (self.length + self.offsets)[None]
        return self.generator.draft_block(self.anchor, positions, context, mask=visible, barrier=self.barrier)

    def append(self, hidden_states: tuple[torch.Tensor, ...], new: int) -> None:
        """Append the features of `new` (<= max_new) newly verified positions, as `append_context` does."""
        self.features[:, :new].copy_(self.generator.drafter.context_features(hidden_states, new))
        self.start.fill_(self.cache.length)
        if self.graphs is None:
            self._append_step()
        else:
            self.graphs.replay("append")
        self.cache.advance(new)

    def draft(self, anchor: torch.Tensor) -> DraftedBlock:
        """A block from the anchor and the whole cache. The tensors it returns are overwritten by the next draft."""
        self.anchor.copy_(anchor)
        self.length.fill_(self.cache.length)
        if self.graphs is None:
            return self._draft_step()
        return self.graphs.replay("draft")
