"""Gating policies: how many of the drafted tokens the target verifies this round.

A policy is any callable `(prefix_probs) -> int` where `prefix_probs[k]` is the drafter's estimate that drafts
0..k all survive verification (`a_k = Π c_i`). It returns L in 0..len(prefix_probs). The round calls exactly one
policy per round. Contract, for sampling to stay lossless: whether L >= k may depend on `prefix_probs[:k]` only (a
stopping rule). `prefix_probs[k]` already depends on the k-th draft, the last one L >= k verifies, so a policy that
looks at it, or further, verifies sampled drafts against a q they were not drawn from. Every policy here keeps to it
(tests/test_scheduler.py, tests/test_sampling_distribution.py).

A policy may also have `should_draft()` (False: skip drafting this round, a plain one-token step),
`best_length(prefix_probs) -> (L, rate)` (sizes prompt-lookup continuations), `observe(tokens, seconds,
drafted)` (what each round's forward carried and the round took) and `settled(prefix_probs) -> bool` (True when
these first estimates already fix an L below their count, whatever follows: drafting on the CPU stops there, since no
later draft would be verified; pure, and False where L depends on later positions). Everything here is a pure
function of prefix probabilities and costs; the costs themselves are measured in `profile.py`, and names are turned
into policies in `routing.py` (`make_gating`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol


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

    def settled(self, prefix_probs: Sequence[float]) -> bool:
        return self.length is not None and self.length < len(prefix_probs)

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

    def settled(self, prefix_probs: Sequence[float]) -> bool:
        return self(prefix_probs) < len(prefix_probs)

    def __repr__(self) -> str:
        return f"ConfidenceThreshold({self.threshold})"


def isotonic(values: Sequence[float]) -> list[float]:
    """The closest nondecreasing sequence (pool adjacent violators): more tokens never cost less, whatever the noise."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, n1), (m2, n2) = blocks.pop(-2), blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(int(n))]


def convex_envelope(values: Sequence[float]) -> list[float]:
    """The greatest convex sequence below `values` (their lower convex hull, read at each index). Measured costs are
    noisy steps (flat on the H200, where a forward is launch-bound); under a convex cost each extra token costs no
    less than the one before, so the scheduler may stop at the first length that does not pay (see PrefixScheduler)."""
    hull: list[int] = []
    for i, v in enumerate(values):
        while len(hull) >= 2:
            (i1, v1), (i2, v2) = (hull[-2], values[hull[-2]]), (hull[-1], values[hull[-1]])
            if (v2 - v1) * (i - i1) < (v - v1) * (i2 - i1):  # hull[-1] lies below the chord: keep it
                break
            hull.pop()
        hull.append(i)
    out = []
    for left, right in zip(hull, hull[1:], strict=False):
        slope = (values[right] - values[left]) / (right - left)
        out += [values[left] + slope * (i - left) for i in range(left, right)]
    return [*out, float(values[hull[-1]])] if hull else []


EXTRA_WEIGHT = 0.3  # the latest round's weight in the moving average of what rounds take beyond their modelled cost


class PrefixScheduler:
    """Gating policy: verify the prefix L that maximises expected tokens per second for one request,
    `(1 + Σ_{k≤L} a_k) / (draft_s + verify_s[L])`, where `verify_s[L]` is the cost of a forward of L + 1 tokens.

    L grows one position at a time while the rate still rises, and stops at the first position that does not raise
    it (as the batched Algorithm 1 does, `schedule_batch`); on the convex envelope of the measured costs
    (`convex_envelope`, which smooths their noise) that is the best L overall. Whether position k is verified thus
    depends only on a_1 .. a_k, that is on the drafts before k, never on draft k or later ones: when sampling, a
    choice that looked further ahead would make verifying k depend on the token drafted at k, which biases
    speculative sampling away from the target's distribution (tests/test_sampling_distribution.py measures that).

    Greedy decoding has no such constraint: drafts are argmax tokens, verified by matching, so any L is lossless. With
    `look_ahead=True` (what `generate()` sets when it does not sample) L is the best length over all of them, on the
    measured costs themselves. That matters where they are a step rather than convex — on a 2-core CPU a forward of 2
    tokens costs ~1.5 times one of 1 token and a forward of 8 not much more than one of 2: the envelope spreads that
    step over every length, so the stopping rule judges each draft by a cost it does not have.

    Drafting must also pay for itself: when even the best L is expected to yield fewer tokens per second than plain
    decoding (one token per `verify_s[0]`), as with a weak drafter on a device where drafting is dear, the generator
    asks `should_draft()` and skips drafting for the next 1, 2, 4 ... `max_idle_rounds` rounds (plain one-token steps),
    then drafts again to look; a round that pays resets the wait.

    The measured costs leave out what a round does beside its forward and drafting (sampling's work, the loop's own
    bookkeeping, the host waiting on the device), so `observe` tracks what each round took beyond its modelled cost,
    apart for rounds that drafted and rounds that did not, and planning adds it. Only costs are learnt here: how the
    drafts fare is the generator's record over the whole call (`Drafting.corrected`), never a few recent rounds —
    judged by the last few rounds' tokens, a run of bad luck made drafting wait, and the rare rounds drafted while
    waiting seldom lifted it again (on an H200 MT-Bench drafted in 4% of its rounds). `watch_rounds=False` plans with
    the given costs alone (tests that make costs up).
    """

    def __init__(
        self,
        verify_s: Sequence[float],
        draft_s: float,
        max_idle_rounds: int = 32,
        look_ahead: bool = False,
        watch_rounds: bool = True,
    ):
        if not verify_s:
            raise ValueError("verify_s needs the cost of at least a one-token forward")
        if max_idle_rounds < 0:
            raise ValueError(f"max_idle_rounds must be >= 0, got {max_idle_rounds}")
        self.verify_s = convex_envelope(verify_s)
        self.measured = isotonic(verify_s)  # what look-ahead optimises over (more tokens never cost less)
        self.look_ahead = look_ahead
        self.draft_s = float(draft_s)
        self.max_idle_rounds = max_idle_rounds
        self.watch_rounds = watch_rounds
        self._idle = 0  # rounds left to skip
        self._wait = 1  # rounds to skip after the next round that does not pay
        # seconds a round took beyond its modelled cost (`observe`), moving averages started by the first round
        # measured (None: none yet): rounds that drafted, and rounds that did not
        self._extra: dict[bool, float | None] = {True: None, False: None}

    def best_length(self, prefix_probs: Sequence[float]) -> tuple[int, float]:
        """(L, its expected tokens per second), with no side effects: the stopping rule of the class docstring, or
        with `look_ahead` the best L overall. Also sizes prompt-lookup continuations, whose survival the generator
        estimates from earlier rounds."""
        costs = self.measured if self.look_ahead else self.verify_s
        fixed = self.draft_s + (self._extra[True] or 0.0)
        best, best_rate, gain = 0, 1.0 / (fixed + costs[0]), 1.0
        for length, a in enumerate(prefix_probs[: len(costs) - 1], start=1):
            gain += a
            rate = gain / (fixed + costs[length])
            if rate > best_rate:
                best, best_rate = length, rate
            elif not self.look_ahead:  # stop here, whatever later positions might bring (see the class docstring)
                break
        return best, best_rate

    def settled(self, prefix_probs: Sequence[float]) -> bool:
        """The stopping rule has stopped within these positions (never with `look_ahead`, which reads them all)."""
        return not self.look_ahead and self.best_length(prefix_probs)[0] < len(prefix_probs)

    def __call__(self, prefix_probs: Sequence[float]) -> int:
        best, best_rate = self.best_length(prefix_probs)
        if best_rate * (self.verify_s[0] + (self._extra[False] or 0.0)) < 1.0:  # slower than plain decoding: wait
            self._back_off()
        else:
            self._wait = 1
        return best

    def observe(self, tokens: int, seconds: float, drafted: bool) -> None:
        """After a round: its forward carried `tokens` tokens, it took `seconds` (wall clock, the loop's work
        included), and it drafted or not. What it took beyond its modelled cost is added to plans from then on."""
        if seconds <= 0 or not self.watch_rounds:
            return
        modelled = self.measured[min(tokens, len(self.measured)) - 1] + (self.draft_s if drafted else 0.0)
        excess, average = seconds - modelled, self._extra[drafted]
        self._extra[drafted] = excess if average is None else average + EXTRA_WEIGHT * (excess - average)

    def _back_off(self) -> None:
        self._idle, self._wait = min(self._wait, self.max_idle_rounds), min(2 * self._wait, self.max_idle_rounds)

    def should_draft(self) -> bool:
        """Called by the generator before each round: False while drafting is expected not to pay."""
        if self._idle > 0:
            self._idle -= 1
            return False
        return True

    def __repr__(self) -> str:
        verify = f"{self.verify_s[0] * 1e3:.1f}-{self.verify_s[-1] * 1e3:.1f} ms"
        return f"PrefixScheduler(draft {self.draft_s * 1e3:.1f} ms, verify {verify})"


def schedule_batch(
    prefix_probs: Sequence[Sequence[float]], verify_cost: Callable[[int], float], draft_cost: float = 0.0
) -> list[int]:
    """Algorithm 1 (batched prefix scheduling): how many drafts of each request to verify in one batched forward.

    Every request verifies at least its anchor (one token, one sure new token each). Then all (request, k) pairs are
    ranked by prefix survival a_k and admitted greedily while the modeled throughput
    `(batch + Σ admitted a) / (draft_cost + verify_cost(batch + admitted))` rises; the first admission that does not
    raise it ends the search. `verify_cost(n)` is the cost of a forward carrying n tokens in all.

    Why stopping there is safe: a_k never increases with k (a product of probabilities), so admissions in ranked order
    bring ever smaller gains; when each extra token costs no less than the one before, throughput is unimodal in the
    number admitted — once an admission fails to raise it, none after can. Within a request the ranking admits k only
    after k - 1, since a_k <= a_{k-1}.
    """
    for r, probs in enumerate(prefix_probs):
        if any(not 0.0 <= a <= 1.0 for a in probs) or any(b > a for a, b in zip(probs, probs[1:], strict=False)):
            raise ValueError(f"request {r}: prefix probabilities must lie in [0, 1] and never increase, got {probs}")
    batch = len(prefix_probs)
    lengths = [0] * batch
    ranked = sorted(((a, k, r) for r, probs in enumerate(prefix_probs) for k, a in enumerate(probs)),
                    key=lambda item: (-item[0], item[1], item[2]))  # fmt: skip
    gain, tokens = float(batch), batch
    rate = gain / (draft_cost + verify_cost(tokens))
    for a, _, r in ranked:
        next_rate = (gain + a) / (draft_cost + verify_cost(tokens + 1))
        if next_rate <= rate:
            break
        gain, tokens, rate = gain + a, tokens + 1, next_rate
        lengths[r] += 1
    return lengths
