"""Microbenchmark of the fused Markov/confidence kernel against the eager PyTorch loop, and its share of a real
`generate()` round with SmolLM2-135M-Instruct.

    python bench/markov_kernel_bench.py [--out bench/results/h200_markov_kernel.json]

Part 1: one round (γ positions, V = 49152) with each backend, median of CUDA-event timings over many repeats;
greedy, temperature sampling, and top-k (50) / top-p (0.9) sampling against Transformers' warpers in the loop.
Part 2: `generate()` on GSM8K prompts with an untrained drafter (fixed gating, all γ drafts verified) under each
backend, greedy (in ABBA order) and sampling with Transformers' defaults (top_k=50); per round: total time, drafting
time, and the Markov/confidence call alone (host time from a profiled pass; the kernel's device time too).
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
from transformers import LogitsProcessorList
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

import dspark_hf
from dspark_hf.decoding import round as decoding_round
from dspark_hf.evaluation import read_eval_prompts
from dspark_hf.kernels import markov as mk

EVAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"


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


def micro(vocab: int, rank: int, steps: int, dtype: torch.dtype, sample: bool, top_k=None, top_p=None) -> dict:
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
    warpers = LogitsProcessorList(
        ([TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p else [])
    )
    prefix_ids = args["anchor"].view(1, 1)

    def eager_call():
        return mk.markov_draft_reference(**args, logits_processor=warpers, prefix_ids=prefix_ids)

    def kernel_call():
        return mk.markov_draft_triton(**args, top_k=top_k, top_p=top_p)

    assert torch.equal(eager_call()[0], kernel_call()[0]), "kernel and reference disagree"
    eager = median_ms(eager_call)
    fused = median_ms(kernel_call)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(200):  # back to back, one sync at the end: bounded by host launch overhead if not by the GPU
        kernel_call()
    torch.cuda.synchronize()
    host_bound = (time.perf_counter() - started) / 200 * 1000
    return {
        "vocab": vocab,
        "rank": rank,
        "gamma": steps,
        "dtype": str(dtype).replace("torch.", ""),
        "sample": sample,
        "top_k": top_k,
        "top_p": top_p,
        "eager_ms": eager,
        "kernel_ms": fused,
        "kernel_back_to_back_ms": host_bound,
        "speedup": eager / fused,
    }


def generate_share(
    backend: str, prompts: list[str], new_tokens: int, target, tokenizer, drafter, sample: bool = False
) -> dict:
    """Timing pass (no profiler) for tok/s and round time; one profiled pass for the Markov/confidence call.

    The call's cost is its host time (the round is launch-bound: that is what delays the next launch) and, for the
    kernel, its device time. Syncing around the call instead would add two synchronisations (~0.3 ms each here).
    """
    import os

    from torch.profiler import ProfilerActivity, profile, record_function

    from dspark_hf.targets import encode_prompt

    os.environ[mk.BACKEND_ENV] = backend
    # sampling keeps Transformers' defaults (top_k=50): the kernel's top-k path
    kwargs = dict(max_new_tokens=new_tokens, do_sample=sample, assistant_model=drafter, gating="fixed")
    torch.manual_seed(0)
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

    original = decoding_round.markov_draft

    def labelled(*args, **kw):
        with record_function("markov_draft"):
            return original(*args, **kw)

    decoding_round.markov_draft = labelled
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            target.generate(**encoded[0], **kwargs)
    finally:
        decoding_round.markov_draft = original
    calls = [e for e in prof.events() if e.name == "markov_draft" and e.device_type.name == "CPU"]
    kernels = [e for e in prof.events() if "markov_draft_kernel" in e.name and e.device_type.name == "CUDA"]
    host_ms = sum(e.cpu_time_total for e in calls) / len(calls) / 1000
    round_ms = 1000 * total / rounds
    return {
        "backend": backend,
        "sample": sample,
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
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--only-top-k", action="store_true", help="part 1's top-k / top-p rows only")
    parser.add_argument("--new-tokens", type=int, default=96)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs CUDA"

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
        "micro": [],
        "generate_round": [],
    }
    out = Path(args.out)
    header = ("gamma", "rank", "dtype", "sample", "top_k", "top_p", "eager ms", "kernel ms", "x", "b2b ms")
    print(" ".join(f"{h:>9}" for h in header), flush=True)
    dtypes = (torch.float32, torch.bfloat16)
    settings = [(g, 128, dt, sample, None, None) for g in (4, 8, 16) for dt in dtypes for sample in (False, True)]
    settings += [(8, rank, torch.bfloat16, False, None, None) for rank in (64, 256)]
    # Transformers' default sampling (top_k=50), with and without top_p
    settings += [(gamma, 128, torch.float32, True, 50, top_p) for gamma in (4, 8, 16) for top_p in (None, 0.9)]
    if args.only_top_k:
        settings = [row for row in settings if row[4]]
    for gamma, rank, dtype, sample, top_k, top_p in settings:
        r = micro(49152, rank, gamma, dtype, sample, top_k, top_p)
        result["micro"].append(r)
        out.write_text(json.dumps(result, indent=2))  # partial results survive a time limit
        print(
            f"{r['gamma']:>9} {r['rank']:>9} {r['dtype']:>9} {r['sample']!s:>9} {r['top_k']!s:>9} {r['top_p']!s:>9} "
            f"{r['eager_ms']:>9.3f} {r['kernel_ms']:>9.3f} {r['speedup']:>9.1f} {r['kernel_back_to_back_ms']:>9.3f}",
            flush=True,
        )

    if args.only_top_k:
        return
    target, tokenizer = dspark_hf.load_target(device="cuda")
    drafter = dspark_hf.DSparkDrafter.from_target(target)  # rank 128, γ = 7
    prompts = read_eval_prompts(EVAL_DIR / "gsm8k.jsonl", args.prompts)
    # greedy in ABBA order: a backend that always ran second would carry any drift (clocks, allocator) as its own
    # cost; then sampling with Transformers' defaults (top_k=50)
    runs = [(b, False) for b in ("torch", "triton", "triton", "torch")] + [(b, True) for b in ("triton", "torch")]
    for backend, sample in runs:
        r = generate_share(backend, prompts, args.new_tokens, target, tokenizer, drafter, sample)
        result["generate_round"].append(r)
        out.write_text(json.dumps(result, indent=2))
        print(
            f"generate/{r['backend']}/{'sample' if r['sample'] else 'greedy'}: {r['tok_s']:.1f} tok/s, "
            f"round {r['round_ms']:.2f} ms, draft "
            f"{r['draft_ms_per_round']:.2f} ms ({100 * r['draft_share_of_round']:.1f}%), markov+confidence host "
            f"{r['markov_confidence_host_ms_per_round']:.3f} ms ({100 * r['markov_confidence_share_of_round']:.2f}%), "
            f"kernel device {r['kernel_device_ms_per_round']} ms",
            flush=True,
        )


if __name__ == "__main__":
    main()
