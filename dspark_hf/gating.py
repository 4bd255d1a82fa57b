"""Gating policies: how many of the γ drafted tokens the target verifies this round.

A policy is any callable `(prefix_probs) -> int` where `prefix_probs[k]` is the drafter's estimate that drafts
0..k all survive verification (`a_k = Π c_i`). It returns L in 0..len(prefix_probs). The generator calls exactly one
policy per round. Contract, for sampling to stay lossless: whether L >= k may depend on `prefix_probs[:k]` only (a
stopping rule). `prefix_probs[k]` already depends on the k-th draft, the last one L >= k verifies, so a policy that
looks at it, or further, verifies sampled drafts against a q they were not drawn from. All three policies here
keep to it (tests/test_scheduler.py, tests/test_sampling_distribution.py).

By name: `"scheduler"` (the default: `scheduler.PrefixScheduler`, from measured device costs), `"threshold"` /
`"threshold:0.3"`, `"fixed"` (all γ drafts) / `"fixed:4"`.

Self-contained on purpose: this file travels with every checkpoint as Hub remote code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from .modeling_dspark import DSparkDrafter

GATING_NAMES = ("scheduler", "threshold", "fixed")


class GatingPolicy(Protocol):
    def __call__(self, prefix_probs: Sequence[float]) -> int: ...


class FixedLength:
    """Verify the first `length` drafts (all of them with `length=None`): the plain DFlash-style round."""

    def __init__(self, length: int | None = None):
        if length is not None and length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.length = length

    def __call__(self, prefix_probs: Sequence[float]) -> int:
        n = len(prefix_probs)
        return n if self.length is None else min(self.length, n)

    def __repr__(self) -> str:
        return f"FixedLength({self.length})"


class ConfidenceThreshold:
    """Verify drafts while their predicted prefix survival is at least `threshold` (always at least `min_length`).

    Verifying a draft that is likely rejected costs target compute and buys nothing; this cuts those.
    """

    def __init__(self, threshold: float = 0.1, min_length: int = 1):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold = threshold
        self.min_length = min_length

    def __call__(self, prefix_probs: Sequence[float]) -> int:
        length = 0
        for a in prefix_probs:
            if a < self.threshold:
                break
            length += 1
        return min(max(length, self.min_length), len(prefix_probs))

    def __repr__(self) -> str:
        return f"ConfidenceThreshold({self.threshold})"


def parse_gating(spec: str) -> tuple[str, float | None]:
    """`"name"` or `"name:value"` → (name, value); raises on anything else, naming the accepted forms."""
    name, _, value = spec.partition(":")
    problem = name not in GATING_NAMES or (name == "scheduler" and value)
    try:
        number = float(value) if value else None
    except ValueError:
        problem = True
    if not problem and name == "fixed" and number is not None and (number != int(number) or number < 0):
        problem = True
    if problem:
        raise ValueError(
            f"Unknown gating {spec!r}: choose 'scheduler', 'threshold' (or 'threshold:<a in [0, 1]>'), "
            "'fixed' (all drafts) or 'fixed:<L>', or pass a callable policy"
        )
    return name, number


def make_gating(
    spec: str,
    threshold: float = 0.1,
    target: PreTrainedModel | None = None,
    drafter: DSparkDrafter | None = None,
    max_tokens: int | None = None,
    look_ahead: bool = False,
    static: bool = False,
) -> GatingPolicy:
    """Build a policy from its name, as stored in `DSparkConfig.gating` or given on the CLI. The scheduler needs the
    target and the drafter: it measures (once, cached on disk) what their rounds cost on this device, for forwards
    of up to `max_tokens` new tokens (default: the drafter's block + 1); `look_ahead` (greedy decoding only) lets it
    pick the best length overall rather than stop at the first that does not pay (`PrefixScheduler`); `static`: the
    static loop verifies, at its own costs."""
    name, value = parse_gating(spec)
    if name == "threshold":
        return ConfidenceThreshold(threshold if value is None else value)
    if name == "fixed":
        return FixedLength(None if value is None else int(value))
    if target is None or drafter is None:
        raise ValueError("gating 'scheduler' needs the target and the drafter (it measures their costs)")
    from .scheduler import PrefixScheduler

    return PrefixScheduler.for_models(target, drafter, max_tokens, look_ahead, static)
