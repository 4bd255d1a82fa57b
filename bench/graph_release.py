"""Why captures failed now and then (issue #40), reproduced deterministically on a GPU, and what the fix costs or saves.

The cause: a CUDA graph destroyed while another capture is open. CUDA refuses the destruction ("operation not
permitted when stream is capturing (function reset)") and the open capture is invalidated ("operation failed due to a
previous error during capture"). Graphs held in a reference cycle are destroyed whenever Python's cyclic garbage
collector next runs, and the collector runs whenever allocations cross its threshold, which can be in the middle of a
capture. On 2f7a6ad each `generate()` call captured its drafting graphs afresh and left the last call's in a cycle
(`generator.graphs` <-> `DraftingGraphs.generator`). To make "the collector runs in the middle of a capture"
deterministic, each case below runs the collector at that moment itself (`gc.collect()` from inside the captured step).

    python bench/graph_release.py                          # the cases on this tree
    python bench/graph_release.py --old /path/to/old/tree  # the package cases also on an older dspark_hf

Cases (one process each, a JSON line each):
- `raw`: graph B in a reference cycle, dropped; graph A captured as 2f7a6ad's GraphSet did (own stream and pool,
  thread_local mode) with a collection inside the capture. Expected: A's capture fails.
- `graphset`: the same with `GraphSet` (this tree). Expected: A captured and correct.
- `package`: the shipped drafter on the SmolLM2 target: a DSpark call, then calls whose drafting capture runs a
  collection inside (a forward pre-hook on the drafter that collects while a capture is open). Expected on 2f7a6ad:
  the capture fails and the call drafts eagerly; on this tree: no failure.
- `timing`: a 16-token and a 256-token greedy call (after warm-up calls that capture every graph): median seconds
  and the graphs captured per call.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def products() -> tuple:
    g = torch.Generator(device="cuda").manual_seed(0)
    return tuple(
        (torch.randn(m, k, device="cuda", generator=g), torch.randn(n, k, device="cuda", generator=g))
        for m, k, n in [(1, 576, 49152), (17, 576, 1536)]
    )


def run(pairs: tuple) -> list[torch.Tensor]:
    return [torch.nn.functional.linear(x, w) for x, w in pairs]


def raw_capture(step) -> tuple[torch.cuda.CUDAGraph, object]:
    """A capture as 2f7a6ad's GraphSet made it: warm-up on a side stream, capture on a stream and pool of its own."""
    stream, side = torch.cuda.Stream(), torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph.capture_begin(pool=torch.cuda.graph_pool_handle(), capture_error_mode="thread_local")
        try:
            outputs = step()
        except BaseException:
            with contextlib.suppress(Exception):
                graph.capture_end()
            raise
        graph.capture_end()
    torch.cuda.current_stream().wait_stream(stream)
    return graph, outputs


def collector_case(mode: str) -> dict:
    """Graph B dies in a cycle; the collector runs inside A's capture."""
    from dspark_hf.decoding.graphs import GraphSet

    def capture(key, step):
        if mode == "raw":
            return raw_capture(step)
        owner = GraphSet(torch.device("cuda"))
        return owner, owner.capture(key, step)

    pairs = products()
    expected = run(pairs)
    holder = [capture("b", lambda: run(pairs))]
    holder.append(holder)  # B now lives in a reference cycle
    del holder
    freed = []

    def step():
        out = run(pairs)
        if torch.cuda.is_current_stream_capturing():
            freed.append(gc.collect())  # the collector, at the moment it would run on its own
        return out

    result = {"case": mode, "captured": False, "error": None, "max_error": None}
    try:
        owner, outputs = capture("a", step)
        owner.replay("a") if mode == "graphset" else owner.replay()
        torch.cuda.synchronize()
        result["captured"] = True
        result["max_error"] = max(float((o - e).abs().max()) for o, e in zip(outputs, expected, strict=True))
    except Exception as err:  # noqa: BLE001 - the failure is what this case looks for
        result["error"] = repr(err)[:200]
    result["objects_freed_inside_the_capture"] = sum(freed)
    return result


def load():
    import dspark_hf

    target, tokenizer = dspark_hf.load_target(device="cuda")
    drafter = dspark_hf.load_drafter(str(ROOT / "model_cards" / "SmolLM2-135M-Instruct-DSpark"), target)[0]
    return dspark_hf, target, tokenizer, drafter


def prompt(tokenizer, words: int) -> dict:
    text = "Explain, step by step, how a bicycle works. " + "Mind every part. " * words
    chat = [{"role": "user", "content": text}]
    chat = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    return tokenizer(text=chat, return_tensors="pt", add_special_tokens=False).to("cuda")


def package_case() -> dict:
    """Calls of growing length (each needs a larger capacity, so each captures drafting graphs) with a collection
    inside every capture; the earlier calls' graphs must never be destroyed there."""
    dspark_hf, target, tokenizer, drafter = load()
    collections = []

    def collect_inside_captures(module, args):
        if torch.cuda.is_current_stream_capturing():
            collections.append(gc.collect())

    drafter.register_forward_pre_hook(collect_inside_captures)
    stderr = io.StringIO()
    identical = []
    with contextlib.redirect_stderr(stderr):
        for words in (10, 300, 600, 900):
            inputs = prompt(tokenizer, words)
            plain = target.generate(**inputs, max_new_tokens=32, do_sample=False)
            out = target.generate(**inputs, assistant_model=drafter, max_new_tokens=32, do_sample=False)
            identical.append(out.tolist() == plain.tolist())
    said = [line for line in stderr.getvalue().splitlines() if "capturing" in line or "unavailable" in line]
    counts = dspark_hf.fallback_counts() if hasattr(dspark_hf, "fallback_counts") else None
    return {
        "case": "package",
        "code": dspark_hf.__file__,
        "collections_inside_captures": len(collections),
        "objects_freed_inside_captures": sum(collections),
        "capture_failures_said": said[:6],
        "fallback_counts": counts,
        "identical": identical,
    }


def timing_case(repeats: int = 5) -> dict:
    dspark_hf, target, tokenizer, drafter = load()
    inputs = prompt(tokenizer, 20)
    captures = getattr(dspark_hf, "capture_count", None)
    result = {"case": "timing", "code": dspark_hf.__file__, "device": torch.cuda.get_device_name()}
    for new in (16, 256):
        for _ in range(2):  # warm-up: every graph of these shapes captured
            target.generate(**inputs, assistant_model=drafter, max_new_tokens=new, do_sample=False)
        seconds, before = [], captures() if captures else None
        for _ in range(repeats):
            torch.cuda.synchronize()
            started = time.perf_counter()
            target.generate(**inputs, assistant_model=drafter, max_new_tokens=new, do_sample=False)
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
        result[f"new_{new}_median_s"] = round(statistics.median(seconds), 4)
        result[f"new_{new}_seconds"] = [round(s, 4) for s in seconds]
        if captures:
            result[f"new_{new}_captures_per_call"] = (captures() - before) / repeats
    return result


CASES = {
    "raw": lambda: collector_case("raw"),
    "graphset": lambda: collector_case("graphset"),
    "package": package_case,
    "timing": timing_case,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", nargs="?", choices=sorted(CASES), help="one case, in this process")
    parser.add_argument("--old", default=None, help="a tree holding an older dspark_hf: its package cases run too")
    parser.add_argument("--old-cache", default=None, help="DSPARK_HF_CACHE for the older tree (its profiles differ)")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(CASES[args.case]()), flush=True)
        return
    runs = [(case, str(ROOT)) for case in CASES]
    if args.old:
        runs += [(case, args.old) for case in ("package", "timing")]
    for case, tree in runs:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([tree, os.environ.get("PYTHONPATH", "")]))
        if tree != str(ROOT) and args.old_cache:
            env["DSPARK_HF_CACHE"] = args.old_cache
        done = subprocess.run([sys.executable, __file__, case], capture_output=True, text=True, env=env, timeout=900)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        said = [line for line in done.stderr.splitlines() if "capturing" in line or "during capture" in line]
        record = json.loads(lines[-1]) if lines else {"case": case, "rc": done.returncode, "stderr": done.stderr[-400:]}
        record.update(tree=tree, cuda_warnings=len(said), first_warning=said[0][:160] if said else None)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
