"""A/B on the CPU: greedy DSpark + prompt lookup (N = 16, the drafter's scheduler on each loop's own measured costs)
verified by Transformers' loop against the static loop (`static_loop.py`, uncaptured on the CPU). Same process, same
prompts, order A B B A per prompt, plain generate() beside them; every output is compared with plain.

    python bench/session13_2026-12-02/cpu_loop_ab.py --out bench/session13_2026-12-02/cpu_loop_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from datetime import UTC, datetime
from pathlib import Path

import torch
import transformers

from dspark_hf import load_drafter, load_profile, load_target
from dspark_hf.evaluation.acceptance import read_eval_prompts
from dspark_hf.targets import encode_prompt, timed_generate

EVAL_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "eval"
LOOPS = {"transformers": "0", "static": "1"}


def summarize(rows: list[dict]) -> dict:
    """Per set and loop, as `dspark bench` reports: tokens over seconds summed across prompts for each pass, the
    median pass, its ratio to plain."""
    summary = {}
    for name in dict.fromkeys(r["set"] for r in rows):
        chosen = [r for r in rows if r["set"] == name]
        tokens = sum(r["new_tokens"] for r in chosen)
        plain = tokens / sum(r["new_tokens"] / r["plain_tok_s"] for r in chosen)
        summary[name] = {"plain_tok_s": round(plain, 2)}
        for loop in LOOPS:
            passes = [tokens / sum(r["new_tokens"] / r[loop][i] for r in chosen) for i in range(2)]
            summary[name][loop] = {
                "tok_s": round(statistics.median(passes), 2),
                "speedup": round(statistics.median(passes) / plain, 3),
                "tau": round(statistics.mean(r[f"{loop}_tau"][0] for r in chosen), 3),
                "identical": all(r[f"{loop}_identical"] for r in chosen),
            }
    return summary


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--sets", nargs="+", default=["gsm8k", "humaneval", "mt-bench"])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    target, tokenizer = load_target(device="cpu")
    drafter, _ = load_drafter(None, target)
    for static in (False, True):  # each loop's costs measured (or read from the cache) before any timing
        load_profile(target, drafter, max_tokens=17, static=static)
    rows = []
    for name in args.sets:
        for prompt in read_eval_prompts(EVAL_DIR / f"{name}.jsonl", args.limit):
            inputs = encode_prompt(tokenizer, prompt, target.device)
            timed_generate(target, inputs, 0, max_new_tokens=16, do_sample=False)  # warm-up
            plain, plain_s = timed_generate(target, inputs, 0, max_new_tokens=args.max_new_tokens, do_sample=False)
            row = {"set": name, "new_tokens": len(plain), "plain_tok_s": len(plain) / plain_s}
            for loop in ("transformers", "static", "static", "transformers"):
                os.environ["DSPARK_STATIC_LOOP"] = LOOPS[loop]
                out, seconds = timed_generate(
                    target, inputs, 0, max_new_tokens=args.max_new_tokens, do_sample=False, assistant_model=drafter,
                    prompt_lookup_num_tokens=16,
                )  # fmt: skip
                assert drafter.stats.loop == loop
                row.setdefault(loop, []).append(len(out) / seconds)
                row.setdefault(f"{loop}_tau", []).append(drafter.stats.tau)
                row[f"{loop}_identical"] = row.get(f"{loop}_identical", True) and out.tolist() == plain.tolist()
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "summary": summarize(rows), "rows": rows, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "cpu_threads": torch.get_num_threads(), "command": "python bench/session13_2026-12-02/cpu_loop_ab.py",
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
