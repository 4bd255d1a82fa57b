"""fp32 linear layers through oneDNN on the CPU while DSpark generates.

A verification forward carries a few tokens, and PyTorch computes a CPU fp32 `nn.Linear` with MKL's GEMM, which is
far off its one-row speed at 2-16 rows: on a 2-core AMD EPYC a SmolLM2-135M forward of 2 tokens took 1.7× one of 1
token, of 8 tokens 1.8×. oneDNN's fp32 inner product stays closer (1.2×, 1.5×) and is faster at every shape measured
(1 token to a 160-token prefill), and a cheaper verification forward is what speculative
decoding lives on. Both compute in full fp32 (oneDNN's default math mode); only the order of the sums differs, as it
does between MKL's one-row and many-row kernels, so greedy output stays token-identical (tested on real prompts).

oneDNN also wants the weight in its own blocked layout: given a plain (out, in) matrix it takes a slower path, and
with the weights packed for a 16-row product a SmolLM2-135M forward of 4-17 tokens ran 1.2-1.5× faster again (1.1×
at one token). So each swapped layer computes from a packed
copy of its weight, made on its first no-grad forward in the block and dropped on exit (the weights are taken as
fixed inside; a second copy of them while the block runs; packing SmolLM2-135M's takes ~0.15-0.35 s here). Not kept
between blocks: weights can change without PyTorch's version counter noticing (fused optimizers, `.data` writes such
as PEFT's adapter merge), and a stale copy would silently change the target's output. Training (autograd) and every
other path use the weight itself.

`onednn_linears(*models, min_rows=n)` swaps the `forward` of each plain fp32 CPU `nn.Linear` of the models whose
weight has at least `MIN_WEIGHT_ELEMENTS` entries for one that calls oneDNN on inputs of `n` to `PACK_ROWS` rows
(tokens) and PyTorch's default on others, and restores it on exit, the way Accelerate's hooks swap `forward`; layers
whose `forward` is already swapped (Accelerate, another caller) and subclasses (quantized layers) are left alone.
Where generation routes, and from how many tokens a forward on, is measured per machine (`decoding/profile.py`,
`onednn_rows`: on a 2-core Intel Xeon oneDNN was slower up to 3 tokens and faster from 4 alone, but a call's worth of
forwards, packing included, ran slower, so it routes nothing there); `DSPARK_ONEDNN=0` turns it off everywhere
(`env.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .. import env

# whether this PyTorch build has oneDNN's linear op: fixed for the process, so looked up once, not per layer call
_ONEDNN_OP = torch.backends.mkldnn.is_available() and all(
    hasattr(torch.ops.mkldnn, op) for op in ("_linear_pointwise", "_reorder_linear_weight")
)
# smaller weights stay on PyTorch's default: oneDNN's call costs ~15-20 us more, which only a larger product repays
# (on the 2-core EPYC a 192x576 layer, SmolLM2's k/v, was no faster at 1-16 rows; 512x512 and up were)
MIN_WEIGHT_ELEMENTS = 1 << 18
PACK_ROWS = 16  # the product shape the packed layout is chosen for, and the most rows computed with it


def onednn_available() -> bool:
    """oneDNN's linear op is in this PyTorch build and not turned off by `DSPARK_ONEDNN=0`."""
    return _ONEDNN_OP and env.onednn_enabled()


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` computed by oneDNN's fp32 inner product (CPU tensors; `weight` plain (out, in) or
    as `pack_weight` returns it)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _exact_on_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """fp32 CPU tensors and no autograd graph to build (the oneDNN op has no backward)."""
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    return not grad and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, computed by oneDNN where that is exact, available and worth its call."""
    if weight.numel() >= MIN_WEIGHT_ELEMENTS and _exact_on_onednn(x, weight) and onednn_available():
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


_PACKED = [0]  # weights packed by swapped layers in this process (a round that packs is no measure of a round's cost)


def packs_made() -> int:
    """How many weights swapped layers have packed in this process so far."""
    return _PACKED[0]


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (out, in) reordered into oneDNN's blocked layout: an opaque tensor for `onednn_linear` only."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS)


def _swappable(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        type(module) is nn.Linear
        and "forward" not in module.__dict__
        and weight is not None
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and weight.numel() >= MIN_WEIGHT_ELEMENTS
    )


def _onednn_forward(module: nn.Linear, min_rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The swapped-in forward: oneDNN on a copy of the weight packed on its first no-grad call for inputs of
    `min_rows` to `PACK_ROWS` rows, else `F.linear` (swapped in only where oneDNN was available and the weight fp32 on
    the CPU: the input is all left to check). Longer inputs (a prompt) stay on the default, which was as fast from 17
    rows on: a call that never verifies a few tokens at once then packs nothing."""
    packed: list[torch.Tensor] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        if min_rows * x.shape[-1] <= x.numel() <= PACK_ROWS * x.shape[-1] and _exact_on_onednn(x, module.weight):
            if not packed:
                packed.append(pack_weight(module.weight))
                _PACKED[0] += 1
            return onednn_linear(x, packed[0], module.bias)
        return F.linear(x, module.weight, module.bias)

    forward.onednn = True  # marks the layer as routed (`uses_onednn` inside the block)
    return forward


def _routed(module: nn.Module) -> bool:
    return getattr(module.__dict__.get("forward"), "onednn", False)


def uses_onednn(model: nn.Module) -> bool:
    """Whether this model's linear layers run on oneDNN inside `onednn_linears`, asked outside the block or inside it
    (the cost profile depends on it, and generation builds its scheduler inside)."""
    return onednn_available() and any(_swappable(m) or _routed(m) for m in model.modules())


@contextmanager
def onednn_linears(*models: nn.Module, min_rows: int = 1) -> Iterator[int]:
    """Route the models' plain fp32 CPU linear layers through oneDNN inside the block, for inputs of at least
    `min_rows` rows; yields how many layers it routed."""
    found = (m for model in models for m in model.modules() if _swappable(m)) if onednn_available() else ()
    swapped = list(dict.fromkeys(found))  # a layer two models share (a bound drafter's head) once
    for module in swapped:
        module.forward = _onednn_forward(module, min_rows)  # an instance attribute shadows nn.Linear.forward
    try:
        yield len(swapped)
    finally:
        for module in swapped:
            module.__dict__.pop("forward", None)
