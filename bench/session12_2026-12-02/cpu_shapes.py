"""Where a CPU round's time goes, by shape: the target forward by number of tokens (as verification runs it), the
LM-head matmul by rows and dtype, and the drafter's round (as the scheduler times it). Interleaved medians (each
repeat times every shape once), so drift on a shared machine hits all shapes alike.

    python bench/session12_2026-12-02/cpu_shapes.py --out bench/session12_2026-12-02/cpu_shapes.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import statistics
from datetime import UTC, datetime
from time import perf_counter

import torch
import transformers
from transformers import DynamicCache

from dspark_hf import load_drafter, load_target
from dspark_hf.scheduler import PROFILE_CONTEXT_TOKENS, device_name, measure_draft


def interleaved(runs: dict, repeats: int) -> dict:
    times = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            started = perf_counter()
            run()
            times[key].append(perf_counter() - started)
    return {key: round(statistics.median(t) * 1e3, 2) for key, t in times.items()}


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    target, _ = load_target(device="cpu")
    context = PROFILE_CONTEXT_TOKENS
    ids = torch.randint(target.config.vocab_size, (1, context + 17))
    cache = DynamicCache(config=target.config)
    cache_kw = "cache" if "cache" in inspect.signature(target.forward).parameters else "past_key_values"
    target(ids[:, :context], use_cache=True, **{cache_kw: cache})

    def verify(tokens: int):
        def run() -> None:
            target(ids[:, context : context + tokens], use_cache=True, output_hidden_states=True, **{cache_kw: cache})
            cache.crop(-tokens)

        return run

    forward_ms = interleaved({n: verify(n) for n in range(1, 18)}, args.repeats)

    head = target.get_output_embeddings().weight.detach()
    heads = {"float32": head, "bfloat16": head.bfloat16()}
    rows = (1, 2, 4, 7, 8, 16)
    inputs = {(dtype, m): torch.randn(m, head.shape[1], dtype=w.dtype) for dtype, w in heads.items() for m in rows}
    linear = {
        f"{dtype} {m}": (lambda w=heads[dtype], x=x: torch.nn.functional.linear(x, w))
        for (dtype, m), x in inputs.items()
    }
    head_ms = interleaved(linear, args.repeats)

    drafter, _ = load_drafter(None, target)
    draft_ms = {"float32": round(measure_draft(target, drafter, repeats=15) * 1e3, 2)}

    report = {
        "what": "CPU cost by shape: target forward (ms) by tokens verified at once, LM-head matmul (ms) by rows "
        f"and dtype ({head.shape[0]} x {head.shape[1]}), the drafter's round (ms)",
        "target_forward_ms": forward_ms,
        "lm_head_ms": head_ms,
        "draft_round_ms": draft_ms,
        "context_tokens": context,
        "device": device_name(target.device),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"python bench/session12_2026-12-02/cpu_shapes.py --repeats {args.repeats} --out {args.out}",
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
