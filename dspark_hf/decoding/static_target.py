"""The target on a static KV cache, its verification forwards replayed from CUDA graphs (used by the static loop and
by the cost profile that times it).

On an H200 an eager SmolLM2-135M forward is ~25 ms of kernel launches for well under 1 ms of GPU work, whatever it
carries. Here, as in gpt-fast, the KV cache is allocated once and a forward of t tokens (t = 1 .. block + 1) is
captured once as a CUDA graph and replayed.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

from .. import notices
from . import compat
from .graphs import GraphSet, capture_graphs, tensor_identity

if TYPE_CHECKING:
    from transformers import PreTrainedModel

CAPACITY_STEP = 1024  # the static cache grows in these steps, so calls of similar length reuse one cache and its graphs


class StaticTarget:
    """The target on a KV cache of fixed capacity, with one CUDA graph per verification length.

    What makes a forward capturable: the cache never moves; where the forward starts (`start`, a device scalar) is
    copied into each cache layer's write position and into the position ids inside the graph; the attention mask over
    the whole capacity (key slot <= query position) is computed from it on the device. Rejected drafts leave stale
    keys past the accepted prefix; the next forward overwrites them and the mask hides them until then.
    A forward that is not captured (the prompt, every forward off CUDA) attends to the slots up to its last token
    only (`_visible`): a 16-token CPU forward at 2048 slots took 114 ms over all of them, 80 ms so.
    Kept on the target between calls (`for_target`), so the graphs are captured once per capacity; the graphs live in
    a `GraphSet` of their own (see `graphs.py` for why that is what keeps them valid).
    """

    def __init__(self, target: PreTrainedModel, capacity: int, capture: bool):
        self.target = weakref.proxy(target)  # weakly: the target keeps this object (no cycle, see graphs.py)
        self.capacity = capacity
        device = self.device = target.device
        self.dtype = target.dtype
        self.identity = weights_identity(target)  # the graphs replay these tensors' addresses
        self.cache = StaticCache(config=target.config, max_cache_len=capacity)
        self.cache_kw = compat.cache_keyword(target)
        self.start = torch.zeros((), dtype=torch.long, device=device)
        self.slots = torch.arange(capacity, device=device)
        self.inputs: dict[int, torch.Tensor] = {}  # tokens -> the captured graph's input ids
        self.graphs = GraphSet(device) if capture else None
        self.failed = False  # a capture failed: this call runs uncaptured, the next one starts afresh

    @classmethod
    def for_target(cls, target: PreTrainedModel, length: int) -> StaticTarget:
        """The target's static cache (and graphs) if it holds `length` tokens and the target's weights are the ones
        it was built on, else a new one (larger when needed)."""
        capture = capture_graphs(target.device)
        kept = getattr(target, "_dspark_static_target", None)
        if kept is not None and (kept.capacity < length or kept.failed or not kept.matches(target)):
            target._dspark_static_target = kept = None  # its graphs and cache go before new ones are allocated
        if kept is None:
            kept = cls(target, -(-length // CAPACITY_STEP) * CAPACITY_STEP, capture)
            target._dspark_static_target = kept
        return kept

    def matches(self, target: PreTrainedModel) -> bool:
        return (self.device, self.dtype) == (target.device, target.dtype) and self.identity == weights_identity(target)

    def _forward(self, ids: torch.Tensor, slots: int | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The forward of `ids` written from `start`, attending to the first `slots` cache slots (None: all)."""
        for layer in self.cache.layers:  # where this forward writes its keys and values
            layer.cumulative_length.copy_(self.start)
        positions = self.start + torch.arange(ids.shape[1], device=ids.device)
        visible = self.slots[None, :slots] <= positions[:, None]
        dtype = self.target.dtype
        mask = torch.zeros(visible.shape, dtype=dtype, device=ids.device).masked_fill_(~visible, torch.finfo(dtype).min)
        out = self.target.forward(  # not a call: `forward` runs the target's hooks once, outside any capture
            input_ids=ids, position_ids=positions[None], attention_mask=mask[None, None], use_cache=True,
            output_hidden_states=True, **{self.cache_kw: self.cache},
        )  # fmt: skip
        return out.logits[0], out.hidden_states

    def _replay(self, ids: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None:
        """The graphed forward of `ids`, captured on first use; None where capturing failed (this call then runs
        uncaptured, exactly as on the CPU)."""
        tokens = ids.shape[1]
        if tokens not in self.graphs:
            self.inputs[tokens] = torch.zeros(1, tokens, dtype=torch.long, device=self.device)
            try:
                self.graphs.capture(tokens, lambda: self._forward(self.inputs[tokens]))
            except Exception as err:  # noqa: BLE001 - any failure of the fast path falls back to the exact eager one
                message = f"CUDA-graph verification unavailable ({err!r}); verifying uncaptured"
                notices.fallback("verify-capture", message)
                self.failed = True
                return None
        self.inputs[tokens].copy_(ids)
        return self.graphs.replay(tokens)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, start: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Logits (tokens, V) and hidden states of `ids` (1, tokens) written at positions start.. of the cache. The
        prompt runs eagerly; a graph's outputs are overwritten by the next replay. The target's forward hooks run
        around it as around a call (replayed or not, captured or not): counters and profilers see every forward."""
        tokens = ids.shape[1]
        if start + tokens > self.capacity:
            raise ValueError(f"{start + tokens} tokens exceed the static cache's {self.capacity}")
        for hook in self.target._forward_pre_hooks.values():
            hook(self.target, (ids,))
        self.start.fill_(start)
        outputs = None
        if self.graphs is not None and not self.failed and start > 0:
            outputs = self._replay(ids)
        if outputs is None:
            self.start.fill_(start)  # a failed capture's warm-up may have moved the cache's write positions
            with self._visible(start + tokens) as slots:
                outputs = self._forward(ids, slots)
        for hook in self.target._forward_hooks.values():
            hook(self.target, (ids,), outputs)
        return outputs

    @contextlib.contextmanager
    def _visible(self, slots: int) -> Iterator[int | None]:
        """For one uncaptured forward, each layer's keys and values are views of their first `slots` slots: the
        forward writes into the whole tensors through them and attends to those slots only. Yields the slots seen
        (None: all of them, where a layer is not a plain `StaticLayer` or is not allocated yet)."""
        layers = self.cache.layers
        if not all(type(layer) is StaticLayer and layer.is_initialized for layer in layers):
            yield None
            return
        whole = [(layer.keys, layer.values) for layer in layers]
        for layer, (keys, values) in zip(layers, whole, strict=True):
            layer.keys, layer.values = keys[:, :, :slots], values[:, :, :slots]
        try:
            yield slots
        finally:
            for layer, (keys, values) in zip(layers, whole, strict=True):
                layer.keys, layer.values = keys, values


def weights_identity(model: torch.nn.Module) -> tuple:
    """The identity of every parameter and buffer (see `tensor_identity`)."""
    return tensor_identity([*model.parameters(), *model.buffers()])
