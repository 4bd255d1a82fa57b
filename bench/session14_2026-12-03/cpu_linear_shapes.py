"""What oneDNN linear layers (`cpu_linears.py`) change on the CPU, by shape: the SmolLM2 target forward (ms) by new
tokens on a 256-token cache (1-17 as verification runs them, 64 and 160 as prefills), the drafter's round (ms, as the
scheduler times it) and the drafter's draft-vocabulary head (7 rows), each with PyTorch's default (MKL) and with
oneDNN. Interleaved medians (each repeat times every shape under both), so drift hits both alike.

    python bench/session14_2026-12-03/cpu_linear_shapes.py --out bench/session14_2026-12-03/cpu_linear_shapes.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
from contextlib import nullcontext
from datetime import UTC, datetime
from time import perf_counter

import torch
import torch.nn.functional as F
import transformers
from transformers import DynamicCache

from dspark_hf import load_drafter, load_target
from dspark_hf.cpu_linears import ONEDNN_ENV, onednn_linear, onednn_linears
from dspark_hf.scheduler import PROFILE_CONTEXT_TOKENS, device_name, measure_draft

TOKENS = (*range(1, 18), 64, 160)


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
    times = {(setting, n): [] for setting in ("mkl", "onednn") for n in TOKENS}
    for _ in range(args.repeats):
        for n in TOKENS:
            for setting in ("mkl", "onednn"):
                with onednn_linears(target) if setting == "onednn" else nullcontext():
                    started = perf_counter()
                    target(ids[:, context : context + n], use_cache=True, output_hidden_states=True,
                           **{cache_kw: cache})  # fmt: skip
                    times[(setting, n)].append(perf_counter() - started)
                cache.crop(-n)
    forward_ms = {
        setting: {n: round(statistics.median(times[(setting, n)]) * 1e3, 1) for n in TOKENS}
        for setting in ("mkl", "onednn")
    }
    draft_ms = {}
    for setting, flag in (("mkl", "0"), ("onednn", "1")):
        os.environ[ONEDNN_ENV] = flag  # measure_draft routes the models itself unless turned off
        draft_ms[setting] = round(measure_draft(target, drafter, repeats=15) * 1e3, 2)
    os.environ[ONEDNN_ENV] = "1"
    head = drafter._draft_vocab_rows()[1]
    rows = torch.randn(drafter.config.block_size, head.shape[1])
    head_times = {"mkl": [], "onednn": []}
    for _ in range(5 * args.repeats):
        for setting, fn in (("mkl", F.linear), ("onednn", onednn_linear)):
            started = perf_counter()
            fn(rows, head)
            head_times[setting].append(perf_counter() - started)
    report = {
        "what": "CPU, MKL (PyTorch's default) against oneDNN linear layers: target forward (ms) by new tokens on a "
        f"{context}-token cache, the drafter's round (ms), the draft-vocabulary head ({tuple(head.shape)}, "
        f"{drafter.config.block_size} rows, ms)",
        "target_forward_ms": forward_ms,
        "forward_ratio_to_one_token": {
            s: {n: round(forward_ms[s][n] / forward_ms[s][1], 2) for n in TOKENS} for s in forward_ms
        },
        "draft_round_ms": draft_ms,
        "draft_head_ms": {s: round(statistics.median(t) * 1e3, 3) for s, t in head_times.items()},
        "device": device_name(target.device),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python bench/session14_2026-12-03/cpu_linear_shapes.py --out ...",
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
