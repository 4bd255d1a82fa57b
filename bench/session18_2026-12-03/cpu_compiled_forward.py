"""Probe: a SmolLM2 forward of n new tokens on a 256-token cache, eager (PyTorch's MKL linear layers) against
`torch.compile(dynamic=True)` with Inductor's weight freezing (oneDNN packed linears, fused elementwise ops), on the
2-core CPU; median ms, and the seconds compilation took. Not used by the package: compiling took minutes here.
Usage: python bench/session18_2026-12-03/cpu_compiled_forward.py"""

import time

import torch
import torch._inductor.config as inductor_config
from transformers import DynamicCache

from dspark_hf.targets import load_target

model, _ = load_target(None, device="cpu")
ids = torch.randint(100, 20000, (1, 256))


def median_ms(forward, n: int, repeats: int = 9) -> float:
    times = []
    for _ in range(repeats):
        cache = DynamicCache(config=model.config)
        model(ids, past_key_values=cache, use_cache=True)
        new = torch.randint(100, 20000, (1, n))
        start = time.perf_counter()
        forward(new, past_key_values=cache, use_cache=True)
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[repeats // 2]


inductor_config.freezing = True
compiled = torch.compile(model, dynamic=True)
with torch.no_grad():
    for n in (1, 6):
        print(f"eager {n} token(s): {median_ms(model, n):.1f} ms")
    start = time.perf_counter()
    for n in (1, 6):
        median_ms(compiled, n, repeats=1)
        print(f"compiled for {n} token(s) after {time.perf_counter() - start:.0f} s")
    for n in (1, 6, 9):
        print(f"compiled {n} token(s): {median_ms(compiled, n):.1f} ms")
