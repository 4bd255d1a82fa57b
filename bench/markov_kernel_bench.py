"""Microbenchmark of the fused Markov/confidence kernel against the eager PyTorch loop, and its share of a real
`generate()` round with SmolLM2-135M-Instruct.

    python bench/markov_kernel_bench.py [--out bench/h200_markov_kernel.json]

Part 1: one round (γ positions, V = 49152) with each backend, median of CUDA-event timings over many repeats.
Part 2: greedy `generate()` on GSM8K prompts with an untrained drafter (fixed gating, all γ drafts verified) under
each backend; per round: total time, drafting time, and the Markov/confidence call alone (host time from a profiled
pass; the kernel's device time too).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers
import triton

import dspark_hf
from dspark_hf import generation
from dspark_hf import markov_kernel as mk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def median_ms(fn, repeats: int = 200, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def micro(vocab: int, rank: int, steps: int, dtype: torch.dtype, sample: bool) -> dict:
    g = torch.Generator(device="cuda").manual_seed(steps * 1000 + rank)
    d = 576

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, device="cuda", generator=g) * scale

    args = dict(
        base_logits=rand(steps, vocab, scale=3.0),
        hidden=rand(steps, d).to(dtype),
        anchor=torch.tensor([17], device="cuda"),
        w1=rand(vocab, rank, scale=0.5).to(dtype),
        w2=rand(vocab, rank, scale=0.5).to(dtype),
        conf_weight=rand(d + rank, scale=0.1).to(dtype),
        conf_bias=rand(1),
        conf_temps=None,
        temperature=0.8 if sample else None,
        uniforms=torch.rand(steps, vocab, device="cuda", generator=g) if sample else None,
    )
    ref = mk.markov_draft_reference(**args)
    out = mk.markov_draft_triton(**args)
    assert torch.equal(ref[0], out[0]), "kernel and reference disagree"
    eager = median_ms(lambda: mk.markov_draft_reference(**args))
    fused = median_ms(lambda: mk.markov_draft_triton(**args))
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(200):  # back to back, one sync at the end: bounded by host launch overhead if not by the GPU
        mk.markov_draft_triton(**args)
    torch.cuda.synchronize()
    host_bound = (time.perf_counter() - started) / 200 * 1000
    return {
        "vocab": vocab,
        "rank": rank,
        "gamma": steps,
        "dtype": str(dtype).replace("torch.", ""),
        "sample": sample,
        "eager_ms": eager,
        "kernel_ms": fused,
        "kernel_back_to_back_ms": host_bound,
        "speedup": eager / fused,
    }


def generate_share(backend: str, prompts: list[str], new_tokens: int, target, tokenizer, drafter) -> dict:
    """Timing pass (no profiler) for tok/s and round time; one profiled pass for the Markov/confidence call.

    The call's cost is its host time (the round is launch-bound: that is what delays the next launch) and, for the
    kernel, its device time. Syncing around the call instead would add two synchronisations (~0.3 ms each here).
    """
    import os

    from torch.profiler import ProfilerActivity, profile, record_function

    from dspark_hf.cli import encode_prompt

    os.environ[mk.BACKEND_ENV] = backend
    kwargs = dict(max_new_tokens=new_tokens, do_sample=False, assistant_model=drafter, gating="fixed")
    encoded = [encode_prompt(tokenizer, p, target.device) for p in prompts]
    target.generate(**encoded[0], **kwargs)  # warm-up: kernel compile, allocator
    rounds = draft = total = tokens = 0.0
    for inputs in encoded:
        torch.cuda.synchronize()
        started = time.perf_counter()
        out = target.generate(**inputs, **kwargs)
        torch.cuda.synchronize()
        total += time.perf_counter() - started
        rounds += drafter.stats.rounds
        draft += drafter.stats.draft_time_s
        tokens += out.shape[1] - inputs["input_ids"].shape[1]

    original = generation.markov_draft

    def labelled(*args, **kw):
        with record_function("markov_draft"):
            return original(*args, **kw)

    generation.markov_draft = labelled
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            target.generate(**encoded[0], **kwargs)
    finally:
        generation.markov_draft = original
    calls = [e for e in prof.events() if e.name == "markov_draft" and e.device_type.name == "CPU"]
    kernels = [e for e in prof.events() if "markov_draft_kernel" in e.name and e.device_type.name == "CUDA"]
    host_ms = sum(e.cpu_time_total for e in calls) / len(calls) / 1000
    round_ms = 1000 * total / rounds
    return {
        "backend": backend,
        "rounds": int(rounds),
        "tok_s": tokens / total,
        "round_ms": round_ms,
        "draft_ms_per_round": 1000 * draft / rounds,
        "draft_share_of_round": draft / total,
        "markov_confidence_host_ms_per_round": host_ms,
        "markov_confidence_share_of_round": host_ms / round_ms,
        "kernel_device_ms_per_round": (sum(e.device_time_total for e in kernels) / len(kernels) / 1000)
        if kernels
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="markov_kernel_bench.json")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs CUDA"

    micro_rows = [
        micro(49152, rank, gamma, dtype, sample)
        for gamma in (4, 8, 16)
        for rank in (128,)
        for dtype in (torch.float32, torch.bfloat16)
        for sample in (False, True)
    ]
    micro_rows += [micro(49152, rank, 8, torch.bfloat16, False) for rank in (64, 256)]

    from conftest import eval_prompts

    target, tokenizer = dspark_hf.load_target(device="cuda")
    drafter = dspark_hf.DSparkDrafter.from_target(target)  # rank 128, γ = 7
    prompts = eval_prompts("gsm8k", args.prompts)
    rounds = [generate_share(b, prompts, args.new_tokens, target, tokenizer, drafter) for b in ("torch", "triton")]

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "triton": triton.__version__,
        },
        "command": " ".join(["python", *sys.argv]),
        "micro": micro_rows,
        "generate_round": rounds,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    header = ("gamma", "rank", "dtype", "sample", "eager ms", "kernel ms", "x", "b2b ms")
    print(" ".join(f"{h:>9}" for h in header))
    for r in micro_rows:
        print(
            f"{r['gamma']:>9} {r['rank']:>9} {r['dtype']:>9} {r['sample']!s:>9} {r['eager_ms']:>9.3f} "
            f"{r['kernel_ms']:>9.3f} {r['speedup']:>9.1f} {r['kernel_back_to_back_ms']:>9.3f}"
        )
    for r in rounds:
        print(
            f"generate/{r['backend']}: {r['tok_s']:.1f} tok/s, "
            f"round {r['round_ms']:.2f} ms, draft "
            f"{r['draft_ms_per_round']:.2f} ms ({100 * r['draft_share_of_round']:.1f}%), markov+confidence host "
            f"{r['markov_confidence_host_ms_per_round']:.3f} ms ({100 * r['markov_confidence_share_of_round']:.2f}%), "
            f"kernel device {r['kernel_device_ms_per_round']} ms"
        )


if __name__ == "__main__":
    main()
