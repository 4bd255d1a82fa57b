"""A DSpark drafting round replayed from CUDA graphs.

On a GPU, a drafting round is ~150 small kernel launches (context fusion, the draft layers, the LM-head rows, the
Markov kernel) that each cost more host time than device time: ~3.4 ms of a ~38 ms round on the H200 with SmolLM2.
Captured once per `generate()` call as two graphs — append the newly verified positions to the context cache; draft
a block from it — a round costs two replays and three small copies.

What makes the round capturable: the context cache is allocated up front (`new_context_cache(capacity)`) and never
moves; what changes from round to round (the cache length, the anchor, the new features) is copied into fixed device
buffers before each replay; the draft layers attend to the whole allocation under a mask of the valid positions; an
append always processes `max_new` rows (rows past the newly verified ones are junk that the next append overwrites
and the mask hides); and the Markov kernel's grid barrier gets its own counter, zeroed inside the graph.

Self-contained on purpose: this file travels with every checkpoint as Hub remote code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .markov_kernel import resolve_backend

if TYPE_CHECKING:
    from .generation import DraftedBlock, DSparkCandidateGenerator


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
        self.graphs: tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph] | None = None
        self.drafted: DraftedBlock | None = None
        if capture:
            self._capture(device)

    def _append_step(self) -> None:
        drafter = self.generator.drafter
        drafter.append_context(self.cache, drafter.fuse_features(self.features), start=self.start)

    def _draft_step(self) -> DraftedBlock:
        visible = torch.cat([self.slots < self.length, self.block_visible])[None, None, None]
        context = list(zip(self.cache.keys, self.cache.values, strict=True))
        positions = (self.length + self.offsets)[None]
        return self.generator.draft_block(self.anchor, positions, context, mask=visible, barrier=self.barrier)

    def _capture(self, device: torch.device) -> None:
        rng = torch.cuda.get_rng_state(device)  # warm-up and capture draw numbers; a seeded run must not notice
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up off the capture: cuBLAS handles, Triton compilation, cached rows
            for _ in range(2):
                self._append_step()
                self._draft_step()
        torch.cuda.current_stream(device).wait_stream(side)
        append, draft = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(append, capture_error_mode="thread_local"):  # see StaticTarget._graph
            self._append_step()
        with torch.cuda.graph(draft, capture_error_mode="thread_local"):
            self.drafted = self._draft_step()
        self.graphs = (append, draft)
        self.cache.length = 0  # the warm-up wrote junk only
        torch.cuda.set_rng_state(rng, device)

    def append(self, hidden_states: tuple[torch.Tensor, ...], new: int) -> None:
        """Append the features of `new` (<= max_new) newly verified positions, as `append_context` does."""
        self.features[:, :new].copy_(self.generator.drafter.context_features(hidden_states, new))
        self.start.fill_(self.cache.length)
        if self.graphs is None:
            self._append_step()
        else:
            self.graphs[0].replay()
        self.cache.advance(new)

    def draft(self, anchor: torch.Tensor) -> DraftedBlock:
        """A block from the anchor and the whole cache. The tensors it returns are overwritten by the next draft."""
        self.anchor.copy_(anchor)
        self.length.fill_(self.cache.length)
        if self.graphs is None:
            return self._draft_step()
        self.graphs[1].replay()
        return self.drafted
