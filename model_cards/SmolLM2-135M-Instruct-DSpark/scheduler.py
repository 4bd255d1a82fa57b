"""The hardware-aware prefix scheduler: measured costs in, the number of drafts to verify out.

Verifying a draft is not free, and what it costs depends on the device: on a 2-core CPU a target forward grows with
the tokens it carries, on an H200 it is flat at batch 1 (launch-bound). So the cost of a round is measured once per
(device, target, dtype), cached on disk, and each round picks the prefix L that maximises expected tokens per second,
`(1 + Σ_{k≤L} a_k) / (T_draft + T_v(L + 1 tokens))`, from the drafter's calibrated prefix survival a_k.

Self-contained on purpose: this file travels with every checkpoint as Hub remote code.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import platform
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from .cpu_linears import onednn_linears, uses_onednn

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from .modeling_dspark import DSparkDrafter

PROFILE_FORMAT = 1
PROFILE_CONTEXT_TOKENS = 256  # the context a verification forward attends to while being timed (a typical prompt)


def cache_dir() -> Path:
    """Where dspark-hf keeps fetched files and cost profiles: `$DSPARK_HF_CACHE`, else `~/.cache/dspark_hf`."""
    return Path(os.environ.get("DSPARK_HF_CACHE", Path.home() / ".cache" / "dspark_hf")).expanduser()


def device_name(device: torch.device) -> str:
    """The accelerator's name, or the CPU's model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {model}"


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


@dataclass
class CostProfile:
    """Measured costs on one device for one target in one dtype.

    `verify_s[b][t - 1]`: seconds of one target forward carrying t new tokens for each of b sequences (b = batch size)
    on a `context_tokens`-long cache, made nondecreasing in t. `draft_s[signature]`: seconds of one drafting round of a
    drafter of that shape (`drafter_signature`), batch 1. CPU costs scale with torch's thread count, so it is kept.
    """

    device: str
    target: str
    dtype: str
    context_tokens: int
    cpu_threads: int
    verify_s: dict[int, list[float]] = field(default_factory=dict)
    draft_s: dict[str, float] = field(default_factory=dict)
    format: int = PROFILE_FORMAT

    def verify_time(self, tokens: float, batch: int = 1) -> float:
        """T_v: seconds to verify `tokens` new tokens per sequence (linear between measured counts; at least 1)."""
        if batch not in self.verify_s:
            raise ValueError(
                f"no verification costs measured for batch size {batch} (have {sorted(self.verify_s)}); "
                f"run `dspark profile --batch-sizes {batch}`"
            )
        row = self.verify_s[batch]
        if tokens > len(row):
            raise ValueError(f"verification of {tokens:g} tokens per sequence is beyond the profile's {len(row)}")
        t = max(float(tokens), 1.0)
        low = int(t)
        if low >= len(row):
            return row[-1]
        return row[low - 1] + (t - low) * (row[low] - row[low - 1])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> CostProfile:
        data = json.loads(text)
        if data.get("format") != PROFILE_FORMAT:
            raise ValueError(f"cost profile format {data.get('format')!r} is not {PROFILE_FORMAT}")
        data["verify_s"] = {int(b): [float(s) for s in row] for b, row in data["verify_s"].items()}
        return cls(**data)


def drafter_signature(drafter: DSparkDrafter) -> str:
    """What a drafting round's cost depends on: the drafter's shape and dtype (not its weights)."""
    c = drafter.config
    dtype = str(drafter.dtype).removeprefix("torch.")
    shape = f"{c.num_hidden_layers}x{c.hidden_size}-ffn{c.intermediate_size}-markov{c.markov_rank}"
    vocab = f"-vocab{len(c.draft_vocab)}" if c.draft_vocab else ""  # a draft vocabulary shrinks the LM-head work
    return f"{shape}-block{c.block_size}{vocab}-{dtype}"


def profile_path(target: PreTrainedModel, static: bool = False) -> Path:
    """One file per (device, target, dtype, loop); the target is named by its config, so any two identical models
    share. `static`: the costs of the static loop's forwards (`static_loop.py`; replayed graphs on CUDA)."""
    device, dtype = target.device, str(target.dtype).removeprefix("torch.")
    threads = torch.get_num_threads() if device.type == "cpu" else None
    identity = [device_name(device), threads, target.config.to_json_string(use_diff=False), dtype]
    if uses_onednn(target):  # generation routes its larger linear layers (cpu_linears.py): the rule as it is now
        from .cpu_linears import MIN_WEIGHT_ELEMENTS

        identity.append(f"onednn-packed-from{MIN_WEIGHT_ELEMENTS}")
    identity = json.dumps([*identity, "static"] if static else identity)
    name = (target.config.name_or_path or target.config.model_type).rstrip("/").split("/")[-1]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{device.type}-{name}-{dtype}{'-static' if static else ''}")
    return cache_dir() / "profiles" / f"{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}.json"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(run: Callable[[], object], device: torch.device) -> float:
    _synchronize(device)
    started = perf_counter()
    run()
    _synchronize(device)
    return perf_counter() - started


def _median_seconds(
    runs: Sequence[Callable[[], object]], device: torch.device, repeats: int, bar: tqdm | None = None
) -> list[float]:
    """Median time of each run. Interleaved (each pass times every run once, after one warm-up pass for allocator,
    kernels and lazy inits): a slow spell on a shared machine then hits every shape alike instead of skewing a few."""
    times: list[list[float]] = [[] for _ in runs]
    for rep in range(repeats + 1):
        for run, kept in zip(runs, times, strict=True):
            seconds = _seconds(run, device)
            if rep:
                kept.append(seconds)
        if bar is not None:
            bar.update(1)
    return [statistics.median(kept) for kept in times]


@torch.no_grad()
def measure_verify(
    target: PreTrainedModel,
    batch_sizes: Iterable[int],
    max_tokens: int,
    context_tokens: int = PROFILE_CONTEXT_TOKENS,
    repeats: int = 7,
    progress: bool = True,
    static: bool = False,
) -> dict[int, list[float]]:
    """Time target forwards of 1..max_tokens new tokens per sequence on a prefilled cache, as verification runs them
    (hidden states out, cache rolled back after each); `static`: as the static loop runs them (batch 1 only)."""
    from transformers import DynamicCache

    from .static_loop import StaticTarget

    device = target.device
    vocab = target.get_output_embeddings().weight.shape[0]
    batch_sizes = sorted(set(batch_sizes))
    # the cache keyword was renamed `past_key_values` -> `cache` after transformers 5.17
    cache_kw = "cache" if "cache" in inspect.signature(target.forward).parameters else "past_key_values"
    passes = len(batch_sizes) * (repeats + 1)
    bar = tqdm(total=passes, desc="profiling verification", unit="pass", disable=not progress)
    costs: dict[int, list[float]] = {}
    for batch in batch_sizes:
        ids = torch.randint(vocab, (batch, context_tokens + max_tokens), generator=torch.Generator().manual_seed(0))
        ids = ids.to(device)
        if static:
            if batch != 1:
                raise ValueError("the static loop runs batch size 1 only")
            on_static = StaticTarget.for_target(target, context_tokens + max_tokens)
            on_static.forward(ids[:, :context_tokens], 0)
            verify = functools.partial(on_static.forward, start=context_tokens)
        else:
            cache = DynamicCache(config=target.config)
            target(ids[:, :context_tokens], use_cache=True, **{cache_kw: cache})

            def verify(new: torch.Tensor, cache: DynamicCache = cache) -> None:
                target(new, use_cache=True, output_hidden_states=True, **{cache_kw: cache})
                cache.crop(-new.shape[1])

        runs = [
            functools.partial(verify, ids[:, context_tokens : context_tokens + n]) for n in range(1, max_tokens + 1)
        ]
        with onednn_linears(target):  # as generation runs them
            costs[batch] = isotonic(_median_seconds(runs, device, repeats, bar))
    bar.close()
    return costs


@torch.no_grad()
def measure_draft(
    target: PreTrainedModel, drafter: DSparkDrafter, context_tokens: int = PROFILE_CONTEXT_TOKENS, repeats: int = 7
) -> float:
    """Time the generator's own drafting step (context append, backbone, Markov draft, gating input) at batch 1,
    in its steady state: a long context already cached, three newly verified tokens to append."""
    from transformers import GenerationConfig

    from .gating import FixedLength
    from .generation import DSparkCandidateGenerator

    drafter.bind(target)
    new = 3
    vocab = target.get_output_embeddings().weight.shape[0]
    ids = torch.randint(vocab, (1, context_tokens + 1), generator=torch.Generator().manual_seed(0)).to(target.device)
    hidden = target(ids[:, :-1], output_hidden_states=True).hidden_states
    config = GenerationConfig(max_length=context_tokens + 8 * drafter.config.block_size)
    generator = DSparkCandidateGenerator(drafter, target, config, gating=FixedLength())
    generator.get_candidates(ids[:, : context_tokens - new + 1], model_outputs=SimpleNamespace(hidden_states=hidden))
    steady = generator.cache.length
    last = SimpleNamespace(hidden_states=tuple(h[:, -new:] for h in hidden))

    def draft() -> None:
        generator.cache.length = steady  # rewind: the same three tokens are appended again each time
        generator.get_candidates(ids, model_outputs=last)

    with onednn_linears(target, drafter):  # as generation runs it
        return _median_seconds([draft], target.device, repeats)[0]


def load_profile(
    target: PreTrainedModel,
    drafter: DSparkDrafter | None = None,
    batch_sizes: Iterable[int] = (1,),
    max_tokens: int | None = None,
    refresh: bool = False,
    progress: bool = True,
    static: bool = False,
) -> CostProfile:
    """The cached profile for this (device, target, dtype), measuring and saving whatever it lacks: the batch sizes,
    up to `max_tokens` tokens per sequence (default: the drafter's block + 1), and the drafter's round. `static`: the
    static loop's costs (batch 1), kept in a file of their own."""
    path = profile_path(target, static)
    max_tokens = max_tokens or (drafter.config.block_size + 1 if drafter is not None else 8)
    profile = None
    if path.exists() and not refresh:
        try:
            profile = CostProfile.from_json(path.read_text())
        except (ValueError, KeyError, TypeError) as err:
            print(f"[dspark] ignoring unreadable cost profile {path} ({err}); measuring again", file=sys.stderr)
    if profile is None:
        profile = CostProfile(
            device=device_name(target.device), target=target.config.name_or_path or target.config.model_type,
            dtype=str(target.dtype).removeprefix("torch."), context_tokens=PROFILE_CONTEXT_TOKENS,
            cpu_threads=torch.get_num_threads(),
        )  # fmt: skip
    missing = [b for b in batch_sizes if len(profile.verify_s.get(b, ())) < max_tokens]
    signature = drafter_signature(drafter) if drafter is not None else None
    if not missing and (signature is None or signature in profile.draft_s):
        return profile
    if progress:
        print(f"[dspark] measuring costs on {profile.device} once; cached at {path}", file=sys.stderr)
    if missing:
        profile.verify_s.update(
            measure_verify(target, missing, max_tokens, profile.context_tokens, progress=progress, static=static)
        )  # fmt: skip
    if signature is not None and signature not in profile.draft_s:
        profile.draft_s[signature] = measure_draft(target, drafter, profile.context_tokens)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(profile.to_json())
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    except OSError as err:  # a read-only home must not stop generation: use the measurement, say it is not kept
        print(f"[dspark] could not cache the cost profile at {path} ({err}); set DSPARK_HF_CACHE", file=sys.stderr)
    return profile


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
    """

    def __init__(self, verify_s: Sequence[float], draft_s: float, max_idle_rounds: int = 32, look_ahead: bool = False):
        if not verify_s:
            raise ValueError("verify_s needs the cost of at least a one-token forward")
        if max_idle_rounds < 0:
            raise ValueError(f"max_idle_rounds must be >= 0, got {max_idle_rounds}")
        self.verify_s = convex_envelope(verify_s)
        self.measured = isotonic(verify_s)  # what look-ahead optimises over (more tokens never cost less)
        self.look_ahead = look_ahead
        self.draft_s = float(draft_s)
        self.max_idle_rounds = max_idle_rounds
        self._idle = 0  # rounds left to skip
        self._wait = 1  # rounds to skip after the next round that does not pay

    @classmethod
    def for_models(
        cls,
        target: PreTrainedModel,
        drafter: DSparkDrafter,
        max_tokens: int | None = None,
        look_ahead: bool = False,
        static: bool = False,
    ) -> PrefixScheduler:
        """The scheduler for this drafter on this target, from the cached profile (measured on first use), with
        verification costs up to `max_tokens` new tokens (default: the drafter's block + 1), those of the static loop
        when it verifies (`static`)."""
        profile = load_profile(target, drafter, max_tokens=max_tokens, static=static)
        return cls(profile.verify_s[1], profile.draft_s[drafter_signature(drafter)], look_ahead=look_ahead)

    def best_length(self, prefix_probs: Sequence[float]) -> tuple[int, float]:
        """(L, its expected tokens per second), with no side effects: the stopping rule of the class docstring, or
        with `look_ahead` the best L overall. Also sizes prompt-lookup continuations, whose survival the generator
        estimates from earlier rounds."""
        costs = self.measured if self.look_ahead else self.verify_s
        best, best_rate, gain = 0, 1.0 / (self.draft_s + costs[0]), 1.0
        for length, a in enumerate(prefix_probs[: len(costs) - 1], start=1):
            gain += a
            rate = gain / (self.draft_s + costs[length])
            if rate > best_rate:
                best, best_rate = length, rate
            elif not self.look_ahead:  # stop here, whatever later positions might bring (see the class docstring)
                break
        return best, best_rate

    def __call__(self, prefix_probs: Sequence[float]) -> int:
        best, best_rate = self.best_length(prefix_probs)
        if best_rate * self.verify_s[0] < 1.0:  # slower than plain decoding: wait before drafting again
            self._idle, self._wait = min(self._wait, self.max_idle_rounds), min(2 * self._wait, self.max_idle_rounds)
        else:
            self._wait = 1
        return best

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
