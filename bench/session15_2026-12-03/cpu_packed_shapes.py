"""What packing the weights for oneDNN (`cpu_linears.packed_weight`) changes on the CPU: a SmolLM2-135M target forward
(ms) by new tokens on a 256-token cache (1-17 as verification runs them, 64 and 160 as prefills) with PyTorch's default
linear layers (MKL), oneDNN on the plain (out, in) weights (session 14) and oneDNN on packed weights (session 15), and
the drafter's round under each of the last two. Interleaved medians: each pass times every shape under every setting,
so drift on a shared machine hits them alike. (`cpu_packed_shapes.json` came from this script's first form, at commit
dda2320, when packed weights were kept across blocks and each forward had a block of its own, shape by shape; packing
now happens once per block, so the blocks are per setting and pass, outside the timing.)

    python bench/session15_2026-12-03/cpu_packed_shapes.py --out bench/session15_2026-12-03/cpu_packed_shapes.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import statistics
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from time import perf_counter

import torch
import transformers
from torch import nn
from transformers import DynamicCache

from dspark_hf import load_drafter, load_target
from dspark_hf.cpu_linears import _swappable, onednn_linear, onednn_linears
from dspark_hf.scheduler import PROFILE_CONTEXT_TOKENS, device_name, measure_draft

TOKENS = (*range(1, 18), 64, 160)
SETTINGS = ("mkl", "onednn_plain", "onednn_packed")


@contextmanager
def plain_onednn(*models: nn.Module):
    """Session 14's routing: oneDNN computing from the layer's own (out, in) weight."""
    layers = [m for model in models for m in model.modules() if _swappable(m)]
    for m in layers:
        m.forward = lambda x, m=m: onednn_linear(x, m.weight, m.bias)
    try:
        yield
    finally:
        for m in layers:
            del m.forward


def routing(setting: str, *models: nn.Module):
    return {"mkl": nullcontext, "onednn_plain": plain_onednn, "onednn_packed": onednn_linears}[setting](*models)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    target, _ = load_target(device="cpu")
    drafter, _ = load_drafter(None, target)
    context = PROFILE_CONTEXT_TOKENS
    ids = torch.randint(target.config.vocab_size, (1, context + max(TOKENS)))
    cache = DynamicCache(config=target.config)
    cache_kw = "cache" if "cache" in inspect.signature(target.forward).parameters else "past_key_values"
    target(ids[:, :context], use_cache=True, **{cache_kw: cache})
    times = {(setting, n): [] for setting in SETTINGS for n in TOKENS}
    for rep in range(args.repeats + 1):  # the first pass warms up
        for setting in SETTINGS:
            with routing(setting, target):  # one block a pass: the weights are packed once in it, then timed
                target(ids[:, context : context + 1], use_cache=True, **{cache_kw: cache})
                cache.crop(-1)
                for n in TOKENS:
                    started = perf_counter()
                    target(ids[:, context : context + n], use_cache=True, output_hidden_states=True,
                           **{cache_kw: cache})  # fmt: skip
                    if rep:
                        times[(setting, n)].append(perf_counter() - started)
                    cache.crop(-n)
    forward_ms = {s: {n: round(statistics.median(times[(s, n)]) * 1e3, 1) for n in TOKENS} for s in SETTINGS}
    draft_ms = {}
    for setting in SETTINGS[1:]:  # measure_draft routes through onednn_linears, inside which a routed layer stays
        with routing(setting, target, drafter):
            draft_ms[setting] = round(measure_draft(target, drafter, repeats=15) * 1e3, 2)
    report = {
        "what": f"CPU target forward (ms) by new tokens on a {context}-token cache, and the drafter's round (ms), "
        "under MKL, oneDNN on plain weights and oneDNN on packed weights",
        "target_forward_ms": forward_ms,
        "packed_speedup_over": {
            s: {n: round(forward_ms[s][n] / forward_ms["onednn_packed"][n], 2) for n in TOKENS} for s in SETTINGS[:2]
        },
        "draft_round_ms": draft_ms,
        "device": device_name(target.device),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python bench/session15_2026-12-03/cpu_packed_shapes.py --out "
        "bench/session15_2026-12-03/cpu_packed_shapes.json",
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
