"""Speed against peers in one process, on the same prompts: plain `generate()` (eager, and `plain_compiled`:
Transformers' static cache with its compiled decoding step, on every device), Transformers' prompt lookup, the
DFlash ablation (no Markov head, CE-trained, same generator) and DSpark — under its default gating, with prompt lookup
beside it (`dspark_lookup`: `prompt_lookup_num_tokens` and the drafter in one call; `dflash_lookup` the same for the
ablation) and, for the gating comparison,
under any other gating policies (`dspark_<gating>` rows). On a CPU, `plain_onednn` and `prompt_lookup_onednn` are
plain `generate()` and prompt lookup with the linear layers computed as DSpark's generation computes them there
(`cpu_linears.py`): what the kernel alone is worth, and the peers on the same kernel.

Each method is warmed up first (`plain_compiled` on the longest prompt and the whole token budget, so that its
cache is allocated and its step compiled once; that warm-up's seconds are reported, never timed); then every prompt
runs through every method (the order rotates per repeat, so no method always follows the same one), the whole pass is
repeated, and a method's figures are medians over passes. `speedup` is against eager plain; `vs_best_plain` against
the fastest plain row of the run (eager, compiled, oneDNN): the honest headline.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import torch
from tqdm.auto import tqdm

from ..decoding.compat import compiled_static_cache
from ..kernels.cpu_linears import onednn_linears, uses_onednn
from ..targets import encode_prompt, sampling_kwargs, synchronize, timed_generate

PLAIN_METHODS = ("plain", "plain_compiled", "plain_onednn")  # the plain decodings a user can have


@dataclass
class MethodRuns:
    """What one method produced over the repeats: per pass its new tokens and seconds, per prompt its output."""

    tokens: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)
    forwards: int = 0  # target forwards in the first pass, prefills included
    first_pass_tokens: int = 0
    rounds: int = 0  # drafter methods, first pass: rounds, drafts verified, drafts accepted
    verified: int = 0
    accepted: int = 0


def method_kwargs(
    drafters: dict[str, Any],
    prompt_lookup_tokens: int,
    gatings: Sequence[str] = (),
    only: Sequence[str] | None = None,
    cpu_onednn: bool = False,
    compiled: bool = True,
) -> dict[str, dict[str, Any]]:
    """generate() keywords per method; a drafter method without a drafter is left out. `gatings` adds one
    `dspark_<gating>` row per policy; `only` keeps those methods (plain and plain_compiled, the baselines, always
    stay); `compiled=False` leaves plain_compiled out (its compile takes minutes on a small CPU); `cpu_onednn`
    adds the `plain_onednn` and `prompt_lookup_onednn` rows (run inside `onednn_linears`, see `method_context`)."""
    methods: dict[str, dict[str, Any]] = {"plain": {}}
    if compiled:
        methods["plain_compiled"] = compiled_static_cache()
    if cpu_onednn:
        methods["plain_onednn"] = {}
    methods["prompt_lookup"] = {"prompt_lookup_num_tokens": prompt_lookup_tokens}
    if cpu_onednn:
        methods["prompt_lookup_onednn"] = dict(methods["prompt_lookup"])
    if drafters.get("dflash_ablation") is not None:  # its confidence head is untrained: verify every draft
        methods["dflash_ablation"] = {"assistant_model": drafters["dflash_ablation"], "gating": "fixed"}
        # with prompt lookup beside it too, so that `dspark_lookup` has a like-for-like ablation
        methods["dflash_lookup"] = dict(methods["dflash_ablation"], prompt_lookup_num_tokens=prompt_lookup_tokens)
    if drafters.get("dspark") is not None:  # the drafter's own default gating, then each one asked for
        drafter = drafters["dspark"]
        default = drafter.config.gating
        methods["dspark"] = {"assistant_model": drafter, "gating": default}
        methods["dspark_lookup"] = dict(methods["dspark"], prompt_lookup_num_tokens=prompt_lookup_tokens)
        for gating in gatings:
            if gating != default:  # the default's figures are the `dspark` row
                methods[f"dspark_{gating}"] = {"assistant_model": drafter, "gating": gating}
    if only is not None:
        unknown = set(only) - set(methods)
        if unknown:
            raise ValueError(f"unknown or unavailable methods {sorted(unknown)}; available: {sorted(methods)}")
        kept = {"plain", "plain_compiled", *only}
        methods = {name: kwargs for name, kwargs in methods.items() if name in kept}
    return methods


def method_context(target, name: str) -> AbstractContextManager:
    """An `*_onednn` method runs with the target's linear layers routed as in DSpark's generation."""
    return onednn_linears(target) if name.endswith("_onednn") else nullcontext()


@torch.no_grad()
def benchmark(
    target,
    tokenizer,
    prompts: list[str],
    drafters: dict[str, Any],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    repeats: int = 3,
    seed: int = 0,
    prompt_lookup_tokens: int = 10,
    gatings: Sequence[str] = (),
    only: Sequence[str] | None = None,
    profile_prompts: int | None = None,
    compiled: bool = True,
) -> dict[str, Any]:
    """Run every method on every prompt `repeats` times. Per method: `tok_s` (median over passes of the pass's new
    tokens / seconds), `speedup` (against eager plain), `vs_best_plain` (against `best_plain`, the fastest plain
    row), `warmup_s` (its untimed warm-up), `tau` (new tokens per target forward, prefills included: 1.0 for
    plain, one measure for every method), `identical` (greedy: every output equals plain's; None when sampling) and
    the passes' raw figures; drafter methods add `acceptance_rate` (accepted / verified drafts) and `mean_verified`
    (drafts verified per round). The profile pass runs over the first `profile_prompts` prompts (all by default)."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    common = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling_kwargs(temperature))
    methods = method_kwargs(
        drafters, prompt_lookup_tokens, gatings, only, cpu_onednn=uses_onednn(target), compiled=compiled
    )
    encoded = [encode_prompt(tokenizer, p, target.device) for p in prompts]
    forwards = [0]
    hook = target.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    runs = {name: MethodRuns() for name in methods}
    warmup_s: dict[str, float] = {}
    longest = max(encoded, key=lambda inputs: inputs["input_ids"].shape[1])
    try:
        for name, kwargs in methods.items():  # warm-up: allocator, kernels, lazy inits, the compile
            # the compiled static cache warms up at its largest shape: allocated and compiled once, before timing
            inputs, budget = (longest, max_new_tokens) if "compile_config" in kwargs else (encoded[0], 16)
            with method_context(target, name):
                started = perf_counter()
                target.generate(**inputs, **dict(common, max_new_tokens=min(budget, max_new_tokens)), **kwargs)
                synchronize(target.device)
                warmup_s[name] = perf_counter() - started
        names = list(methods)
        bar = tqdm(total=repeats * len(prompts) * len(names), desc="benchmarking", unit="run")
        for rep in range(repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in names:
                runs[name].tokens.append(0)
                runs[name].seconds.append(0.0)
            for i, inputs in enumerate(encoded):
                for name in order:
                    forwards[0] = 0
                    with method_context(target, name):
                        out, elapsed = timed_generate(target, inputs, seed + i, **common, **methods[name])
                    new = out.tolist()
                    run = runs[name]
                    run.tokens[-1] += len(new)
                    run.seconds[-1] += elapsed
                    if rep == 0:
                        run.outputs.append(new)
                        run.forwards += forwards[0]
                        run.first_pass_tokens += len(new)
                        stats = getattr(methods[name].get("assistant_model"), "stats", None)
                        if stats is not None:
                            run.rounds += stats.rounds
                            run.verified += stats.verified_tokens
                            run.accepted += stats.accepted_tokens
                    bar.update(1)
        bar.close()
    finally:
        hook.remove()
    report = _summarize(runs, greedy=temperature == 0)
    for name, seconds in warmup_s.items():
        report["methods"][name]["warmup_s"] = seconds
    for name, kwargs in methods.items():
        with method_context(target, name):
            profile = profile_method(target, encoded[:profile_prompts], dict(common, **kwargs), seed)
        report["methods"][name]["profile"] = profile
        if "gating" in kwargs:
            report["methods"][name]["gating"] = str(kwargs["gating"])
    return report


@torch.no_grad()
def profile_method(target, encoded: list[dict[str, torch.Tensor]], generate_kwargs: dict[str, Any], seed: int = 0):
    """Where one method's time goes, from one more (untimed-for-speed) pass over the prompts: the target's forwards
    (timed between a pre- and a post-hook, the device synchronised at each), the drafter's work (its own clock), and
    the rest: Transformers' loop (candidate bookkeeping, logits processing, verification, cache cropping). Rounds of
    the static loop, whose verification replays graphs no hook sees, are timed phase by phase (`round_phases`)."""
    device = target.device
    forward_s, started = [0.0], [0.0]

    def before(*_):
        synchronize(device)
        started[0] = perf_counter()

    def after(*_):
        synchronize(device)
        forward_s[0] += perf_counter() - started[0]

    hooks = [target.register_forward_pre_hook(before), target.register_forward_hook(after)]
    drafter = generate_kwargs.get("assistant_model")
    if drafter is not None:
        generate_kwargs = dict(generate_kwargs, time_rounds=True)
    total = draft = 0.0
    rounds, phases = 0, {}
    try:
        for i, inputs in enumerate(encoded):
            total += timed_generate(target, inputs, seed + i, **generate_kwargs)[1]
            if drafter is not None:
                draft += drafter.stats.draft_time_s
                for phase, (seconds, times) in drafter.stats.round_phases.items():
                    phases[phase] = [a + b for a, b in zip(phases.get(phase, (0.0, 0)), (seconds, times), strict=True)]
                rounds += drafter.stats.rounds if drafter.stats.round_phases else 0
    finally:
        for hook in hooks:
            hook.remove()
    profile = {"total_s": total, "target_forward_s": forward_s[0], "draft_s": draft}
    profile["other_s"] = total - forward_s[0] - draft
    if phases:
        profile.update(rounds=rounds, round_phases=phases)
    return profile


def _summarize(runs: dict[str, MethodRuns], greedy: bool) -> dict[str, Any]:
    rates = {name: [t / s for t, s in zip(r.tokens, r.seconds, strict=True)] for name, r in runs.items()}
    tok_s = {name: statistics.median(rate) for name, rate in rates.items()}
    best_plain = max((name for name in PLAIN_METHODS if name in tok_s), key=tok_s.__getitem__)
    methods = {}
    for name, run in runs.items():
        methods[name] = {
            "tok_s": tok_s[name],
            "speedup": tok_s[name] / tok_s["plain"],
            "vs_best_plain": tok_s[name] / tok_s[best_plain],
            "tau": run.first_pass_tokens / run.forwards,
            "identical": run.outputs == runs["plain"].outputs if greedy else None,
            "tok_s_per_pass": rates[name],
            "new_tokens_per_pass": run.tokens,
        }
        if run.rounds:
            methods[name]["acceptance_rate"] = run.accepted / run.verified if run.verified else None
            methods[name]["mean_verified"] = run.verified / run.rounds
    return {"methods": methods, "best_plain": best_plain}
