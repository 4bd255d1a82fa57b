"""Measured costs of a round's pieces, for the prefix scheduler (`policies.PrefixScheduler`).

Verifying a draft is not free, and what it costs depends on the device: on a 2-core CPU a target forward grows with
the tokens it carries, on an H200 it is flat at batch 1 (launch-bound). So the costs are measured once per (device,
target, dtype, loop) by timing the round's own functions — the target's verification forward, the drafter's context
append and `round.draft_block` —, cached on disk, and read back by every later call.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, LogitsProcessorList, TemperatureLogitsWarper

from .. import env
from ..kernels.cpu_linears import MIN_WEIGHT_ELEMENTS, onednn_linears, uses_onednn
from ..notices import log
from ..targets import synchronize
from . import compat
from .policies import isotonic
from .round import DraftSettings, draft_block, drafting_graphs, speculative_sampling
from .static_target import StaticTarget

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..modeling_dspark import DSparkDrafter

PROFILE_FORMAT = 1
PROFILE_CONTEXT_TOKENS = 256  # the context a verification forward attends to while being timed (a typical prompt)
SAMPLED_TEMPERATURE = 0.7  # a sampled drafting round is timed at the demo's default temperature


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


@dataclass
class CostProfile:
    """Measured costs on one device for one target in one dtype.

    `verify_s[b][t - 1]`: seconds of one target forward carrying t new tokens for each of b sequences (b = batch size)
    on a `context_tokens`-long cache, made nondecreasing in t. `draft_s[key]`: seconds of one drafting round of a
    drafter of that shape, greedy or sampled (`draft_key`), batch 1. CPU costs scale with torch's thread count, so it is
    kept.
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


def draft_key(drafter: DSparkDrafter, do_sample: bool) -> str:
    """The profile's key for a drafting round's cost: the drafter's shape, and whether the call samples (a sampled
    round draws its drafts and accepts them by rejection sampling, which a greedy one does not pay)."""
    return drafter_signature(drafter) + ("-sampled" if do_sample else "")


def _cache_file(target: PreTrainedModel, prefix: str, suffix: str, identity: list) -> Path:
    """A file of the profiles folder for this target on this device: named for people, hashed for identity."""
    device, dtype = target.device, str(target.dtype).removeprefix("torch.")
    threads = torch.get_num_threads() if device.type == "cpu" else None
    identity = json.dumps(
        [device_name(device), threads, target.config.to_json_string(use_diff=False), dtype, *identity]
    )
    name = (target.config.name_or_path or target.config.model_type).rstrip("/").split("/")[-1]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{prefix}{device.type}-{name}-{dtype}{suffix}")
    return env.cache_dir() / "profiles" / f"{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}.json"


def profile_path(target: PreTrainedModel, static: bool = False) -> Path:
    """One file per (device, target, dtype, loop, linear routing); the target is named by its config, so any two
    identical models share. `static`: the costs of the static loop's forwards (`static_target.py`)."""
    rows = onednn_rows(target)  # as generation routes
    identity = [] if rows is None else [f"onednn-packed-from{MIN_WEIGHT_ELEMENTS}-rows{rows}"]
    return _cache_file(target, "", "-static" if static else "", [*identity, "static"] if static else identity)


ONEDNN_TOKENS = 8  # the measurement compares forwards of 1 .. this many new tokens (one-token steps, verification)
CALL_FORWARDS = 32  # ... and then a call's worth of them (a 128-token call at ~4 tokens a round) in one routed block
_ONEDNN_ROWS: dict[Path, int | None] = {}  # this process's decisions, by cache file


def onednn_rows(target: PreTrainedModel) -> int | None:
    """From how many tokens a forward on DSpark's generation computes the target's (and drafter's) fp32 linear layers
    with oneDNN on this machine (`cpu_linears.py`); None: never. oneDNN made few-token forwards 1.2-1.5x faster on a
    2-core AMD EPYC; on a 2-core Intel Xeon it was slower up to 3 tokens (one-token steps 1.2x dearer) and faster
    from 4. So it is measured, never assumed: target forwards of 1..8 new tokens on a 256-token context, each way,
    twice in turn; oneDNN from the fewest tokens from which it was faster at every count measured — if a call's worth
    of forwards routed so, their weights packed once, also beat PyTorch's default (`measure_call`): on the Xeon the
    forwards of 4-8 tokens were faster alone, yet such a block took 0.3-0.8 s longer (packing, and no gain once sizes
    mix), and DSpark calls ran 10-16% faster without oneDNN. Measured once per (machine, target, dtype) and cached
    beside the profiles; $DSPARK_ONEDNN=1 / 0 force it (1: every forward)."""
    if not uses_onednn(target):
        return None
    choice = env.onednn_choice()
    if choice != "auto":
        return 1 if choice == "1" else None
    path = _cache_file(target, "onednn-", "", [f"from{MIN_WEIGHT_ELEMENTS}", torch.__version__, "rows", "call"])
    if path not in _ONEDNN_ROWS:
        try:
            rows = json.loads(path.read_text())["from_tokens"]
            _ONEDNN_ROWS[path] = None if rows is None else int(rows)
        except (OSError, ValueError, KeyError, TypeError):
            _ONEDNN_ROWS[path] = _measure_onednn(target, path)
    return _ONEDNN_ROWS[path]


@torch.no_grad()
def _measure_onednn(target: PreTrainedModel, path: Path) -> int | None:
    log(f"measuring once from how many tokens oneDNN linear layers pay on this CPU; cached at {path}")
    seconds: dict[bool, list[list[float]]] = {True: [], False: []}
    for onednn in (True, False, True, False):  # in turn: a slow spell hits both ways
        seconds[onednn].append(measure_verify(target, [1], ONEDNN_TOKENS, repeats=3, progress=False, onednn=onednn)[1])
    onednn_s, default_s = ([min(pass_s) for pass_s in zip(*seconds[way], strict=True)] for way in (True, False))
    rows = None
    for tokens in range(ONEDNN_TOKENS, 0, -1):  # the fewest tokens from which oneDNN is faster at every count
        if onednn_s[tokens - 1] >= default_s[tokens - 1]:
            break
        rows = tokens
    record: dict = {"from_tokens": rows, "onednn_s": onednn_s, "default_s": default_s}
    pairs = enumerate(zip(onednn_s, default_s, strict=True), start=1)
    ms = "; ".join(f"{n}: {1e3 * a:.0f} / {1e3 * b:.0f}" for n, (a, b) in pairs)
    if rows is not None:  # faster forwards must also repay a call's packing, among the forwards of other sizes
        calls: dict[bool, list[float]] = {True: [], False: []}
        for onednn in (True, False, True, False):
            calls[onednn].append(measure_call(target, rows, onednn))
        record["call_onednn_s"], record["call_default_s"] = min(calls[True]), min(calls[False])
        ms += f"; a call's {CALL_FORWARDS} forwards {record['call_onednn_s']:.2f} / {record['call_default_s']:.2f} s"
        if record["call_onednn_s"] >= record["call_default_s"]:
            rows = record["from_tokens"] = None
    verdict = "never" if rows is None else f"from {rows} tokens on"
    log(f"forward ms by tokens, oneDNN / PyTorch's default: {ms}; DSpark uses oneDNN {verdict} here")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    except OSError as err:
        log(f"could not cache the oneDNN decision at {path} ({err}); set DSPARK_HF_CACHE")
    return rows


@torch.no_grad()
def measure_call(target: PreTrainedModel, rows: int, onednn: bool) -> float:
    """Seconds of a call's worth of target forwards (`CALL_FORWARDS`: one-token steps between verifications of 1 ..
    `ONEDNN_TOKENS` tokens) in one block, routed through oneDNN from `rows` tokens (weights packed once, as a
    `generate()` call packs them) or not."""
    vocab, context_tokens = target.get_output_embeddings().weight.shape[0], PROFILE_CONTEXT_TOKENS
    ids = torch.randint(vocab, (1, context_tokens + ONEDNN_TOKENS), generator=torch.Generator().manual_seed(0))
    ids = ids.to(target.device)
    verify = prefilled_verifier(target, ids[:, :context_tokens])
    sizes = [n for k in range(1, ONEDNN_TOKENS + 1) for n in (1, k)]
    routing = onednn_linears(target, min_rows=rows) if onednn else nullcontext()
    synchronize(target.device)
    started = perf_counter()
    with routing:
        for i in range(CALL_FORWARDS):
            verify(ids[:, context_tokens : context_tokens + sizes[i % len(sizes)]])
    synchronize(target.device)
    return perf_counter() - started


def prefilled_verifier(target: PreTrainedModel, context: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """A forward of new tokens after `context` as verification runs it (hidden states out), the cache rolled back
    after each, so every call sees the same context."""
    cache = DynamicCache(config=target.config)
    cache_kw = compat.cache_keyword(target)
    target(context, use_cache=True, **{cache_kw: cache})

    def verify(new: torch.Tensor) -> None:
        target(new, use_cache=True, output_hidden_states=True, **{cache_kw: cache})
        cache.crop(-new.shape[1])

    return verify


def linear_routing(target: PreTrainedModel, *models: torch.nn.Module) -> AbstractContextManager:
    """How DSpark's generation computes linear layers: through oneDNN for forwards of as many tokens as it pays for
    here (`onednn_rows`)."""
    rows = onednn_rows(target)
    return nullcontext() if rows is None else onednn_linears(target, *models, min_rows=rows)


def _seconds(run: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    started = perf_counter()
    run()
    synchronize(device)
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
    onednn: bool | None = None,
) -> dict[int, list[float]]:
    """Time target forwards of 1..max_tokens new tokens per sequence on a prefilled cache, as verification runs them
    (hidden states out, cache rolled back after each); `static`: as the static loop runs them (batch 1 only);
    `onednn`: with the linear layers routed through oneDNN or not (default: as generation routes them here)."""
    device = target.device
    vocab = target.get_output_embeddings().weight.shape[0]
    batch_sizes = sorted(set(batch_sizes))
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
            verify = prefilled_verifier(target, ids[:, :context_tokens])

        runs = [
            functools.partial(verify, ids[:, context_tokens : context_tokens + n]) for n in range(1, max_tokens + 1)
        ]
        routing = linear_routing(target) if onednn is None else onednn_linears(target) if onednn else nullcontext()
        with routing:
            costs[batch] = isotonic(_median_seconds(runs, device, repeats, bar))
    bar.close()
    return costs


@torch.no_grad()
def measure_draft(
    target: PreTrainedModel,
    drafter: DSparkDrafter,
    context_tokens: int = PROFILE_CONTEXT_TOKENS,
    repeats: int = 7,
    do_sample: bool = False,
) -> float:
    """Time a drafting round as a call runs it — append three newly verified positions to a long cached context,
    draft a block (`round.draft_block`, or its graphs where the round is captured), the one host copy — at batch 1.
    `do_sample`: drafts sampled at `SAMPLED_TEMPERATURE`, plus what accepting them by rejection sampling costs beyond
    the one-token draw that plain sampling makes anyway."""
    drafter.bind(target)
    new, gamma = 3, drafter.config.block_size
    vocab = target.get_output_embeddings().weight.shape[0]
    ids = torch.randint(vocab, (1, context_tokens + 1), generator=torch.Generator().manual_seed(0)).to(target.device)
    hidden = target(ids[:, :-1], output_hidden_states=True).hidden_states
    last = tuple(h[:, -new:] for h in hidden)
    processors = LogitsProcessorList([TemperatureLogitsWarper(SAMPLED_TEMPERATURE)] if do_sample else [])
    settings = DraftSettings.of(drafter, do_sample=do_sample, logits_processor=processors)
    graphs = drafting_graphs(drafter, settings, context_tokens + 8 * gamma, gamma + 1)
    cache = graphs.cache if graphs is not None else drafter.new_context_cache()
    drafter.append_context(cache, drafter.fuse_context(hidden, context_tokens - new))
    steady = cache.length
    positions = torch.arange(context_tokens, context_tokens + gamma, device=target.device)[None]

    def draft() -> None:
        cache.length = steady  # rewind: the same three positions are appended again each time
        if graphs is not None:
            graphs.append(drafter.context_features(last))
            graphs.draft(ids[:, -1]).packed.tolist()
            return
        drafter.append_context(cache, drafter.fuse_context(last))
        context = [cache.get(i) for i in range(len(drafter.layers))]
        draft_block(drafter, settings, ids[:, -1], positions, context, prefix_ids=ids).packed.tolist()

    runs = [draft]
    if do_sample:
        p_logits = torch.randn(gamma + 1, vocab, generator=torch.Generator().manual_seed(1)).to(target.device)
        q_logits, drafts = p_logits[:gamma] + 1.0, ids[0, :gamma]
        runs.append(lambda: speculative_sampling(drafts, q_logits, processors(ids, p_logits)).tolist())
        runs.append(lambda: torch.multinomial(processors(ids, p_logits[:1]).softmax(-1), 1).tolist())
    # the global generators as they were: a sampled call that measures first draws what a seeded call draws
    rng_devices = [target.device] if target.device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), linear_routing(target, drafter):  # as generation runs it
        seconds = _median_seconds(runs, target.device, repeats)
    return seconds[0] + (max(seconds[1] - seconds[2], 0.0) if do_sample else 0.0)


def load_profile(
    target: PreTrainedModel,
    drafter: DSparkDrafter | None = None,
    batch_sizes: Iterable[int] = (1,),
    max_tokens: int | None = None,
    refresh: bool = False,
    progress: bool = True,
    static: bool = False,
    do_sample: bool = False,
) -> CostProfile:
    """The cached profile for this (device, target, dtype), measuring and saving whatever it lacks: the batch sizes,
    up to `max_tokens` tokens per sequence (default: the drafter's block + 1), and the drafter's round, greedy or
    sampled (`do_sample`). `static`: the static loop's costs (batch 1), kept in a file of their own."""
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
    key = draft_key(drafter, do_sample) if drafter is not None else None
    if not missing and (key is None or key in profile.draft_s):
        return profile
    if progress:
        print(f"[dspark] measuring costs on {profile.device} once; cached at {path}", file=sys.stderr)
    if missing:
        profile.verify_s.update(
            measure_verify(target, missing, max_tokens, profile.context_tokens, progress=progress, static=static)
        )  # fmt: skip
    if key is not None and key not in profile.draft_s:
        profile.draft_s[key] = measure_draft(target, drafter, profile.context_tokens, do_sample=do_sample)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(profile.to_json())
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    except OSError as err:  # a read-only home must not stop generation: use the measurement, say it is not kept
        print(f"[dspark] could not cache the cost profile at {path} ({err}); set DSPARK_HF_CACHE", file=sys.stderr)
    return profile
