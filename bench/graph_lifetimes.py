"""What keeps a replayed CUDA graph valid: a check of PyTorch's behaviour behind `GraphSet` (dspark_hf/cuda_graphs.py).

Graph A (matrix products as a verification forward has them) is captured once, right after a first short-lived graph
B, and kept; round after round a B is captured, replayed and destroyed — as a per-call drafting round was —, memory
freed so far is handed back to the driver and refilled with NaN, and A is replayed: it must give its result and write
nothing outside what it owns. Variants:

- `shared`: A and B captured with `torch.cuda.graph` on its default capture stream, one for the whole process (what
  dspark-hf did up to 7c00fe6);
- `shared-clear`: the same, and the cached cuBLAS workspaces dropped after each round, as Inductor's CUDA graphs do
  around each recording (Transformers' `cache_implementation="static"` compiles with them);
- `graphset`: A and B captured by `GraphSet`, with the workspaces dropped after each round too.

    python bench/graph_lifetimes.py            # every variant, each in its own process (a fault ends its CUDA)
    python bench/graph_lifetimes.py shared     # one

Prints one JSON line per variant: rounds survived, NaN cells of freed memory that A's replays overwrote, A's worst
error against eager, and the error that ended it (if any).
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch

ROUNDS = 20


def products(dtype: torch.dtype, seed: int) -> tuple:
    g = torch.Generator(device="cuda").manual_seed(seed)
    shapes = [(1, 576, 49152), (17, 576, 1536), (8, 576, 49152), (2048, 640, 640)]

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda", dtype=dtype, generator=g)

    return tuple((rand(m, k), rand(n, k)) for m, k, n in shapes)


def run(pairs: tuple) -> list[torch.Tensor]:
    return [torch.nn.functional.linear(x, w) for x, w in pairs]


def capture(pairs: tuple, mode: str) -> tuple[object, list[torch.Tensor]]:
    if mode == "graphset":
        from dspark_hf.decoding.graphs import GraphSet

        graphs = GraphSet(torch.device("cuda"))
        return graphs, graphs.capture("run", lambda: run(pairs))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            run(pairs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = run(pairs)
    return graph, outputs


def replay(graph: object) -> None:
    graph.replay("run") if hasattr(graph, "graphs") else graph.replay()


def variant(mode: str) -> dict:
    result = {"mode": mode, "torch": torch.__version__, "rounds": 0, "overwritten": 0, "max_error": 0.0, "error": None}
    try:
        a_pairs = products(torch.float32, 0)
        expected = run(a_pairs)
        graph_a = out_a = None
        for r in range(ROUNDS):
            b_pairs = products(torch.bfloat16, r + 1)
            graph_b, out_b = capture(b_pairs, mode)
            if graph_a is None:  # A comes after the first B, while B's pool holds what was allocated first
                graph_a, out_a = capture(a_pairs, mode)
            replay(graph_b)
            del graph_b, out_b, b_pairs
            torch.cuda.synchronize()
            if mode != "shared":
                torch._C._cuda_clearCublasWorkspaces()
            torch.cuda.empty_cache()  # freed memory goes back to the driver ...
            junk = torch.full((96 << 20,), float("nan"), device="cuda")  # ... and comes back here, as NaN
            replay(graph_a)
            torch.cuda.synchronize()
            result["overwritten"] += int((~torch.isnan(junk)).sum())
            error = max(float((o - e).abs().max() / e.abs().max()) for o, e in zip(out_a, expected, strict=True))
            result["max_error"] = max(result["max_error"], error)
            result["rounds"] = r + 1
            del junk
    except Exception as err:  # noqa: BLE001 - the point is to see what breaks
        result["error"] = repr(err)[:300]
    return result


def main() -> None:
    if len(sys.argv) > 1:
        print(json.dumps(variant(sys.argv[1])))
        return
    for mode in ("shared", "shared-clear", "graphset"):
        done = subprocess.run([sys.executable, __file__, mode], capture_output=True, text=True, timeout=600)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        crashed = {"mode": mode, "crashed": done.returncode, "stderr": done.stderr[-300:]}
        print(lines[-1] if lines else json.dumps(crashed))


if __name__ == "__main__":
    main()
