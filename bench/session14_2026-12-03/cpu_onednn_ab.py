"""A/B on the CPU: greedy DSpark + prompt lookup (N = 16, the scheduler on each setting's own measured costs) with
the linear layers routed through oneDNN while generating (`cpu_linears.py`, the default) against PyTorch's default
(MKL, `DSPARK_ONEDNN=0`). Same process, same prompts, order A B B A per prompt; beside them plain `generate()`, and
plain `generate()` inside `onednn_linears(target)`: how much of the gain plain decoding would get from the same swap.
Every output is compared with plain.

    python bench/session14_2026-12-03/cpu_onednn_ab.py --out bench/session14_2026-12-03/cpu_onednn_ab.json
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
from dspark_hf.cpu_linears import ONEDNN_ENV, onednn_linears
from dspark_hf.evaluation.acceptance import read_eval_prompts
from dspark_hf.targets import encode_prompt, timed_generate

EVAL_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "eval"
SETTINGS = {"mkl": "0", "onednn": "1"}


def tok_s(rows: list[dict], key: str, index: int | None = None) -> float:
    """Tokens over seconds summed across prompts (as `dspark bench` reports), for one pass of a setting."""
    tokens = sum(r["new_tokens"] for r in rows)
    return tokens / sum(r["new_tokens"] / (r[key] if index is None else r[key][index]) for r in rows)


def summarize(rows: list[dict]) -> dict:
    summary = {}
    for name in dict.fromkeys(r["set"] for r in rows):
        chosen = [r for r in rows if r["set"] == name]
        plain = tok_s(chosen, "plain_tok_s")
        entry = {"plain_tok_s": round(plain, 2)}
        entry["plain_onednn"] = {"tok_s": round(tok_s(chosen, "plain_onednn_tok_s"), 2)}
        entry["plain_onednn"]["speedup"] = round(entry["plain_onednn"]["tok_s"] / plain, 3)
        for setting in SETTINGS:
            best = statistics.median(tok_s(chosen, setting, i) for i in range(2))
            entry[setting] = {
                "tok_s": round(best, 2),
                "speedup": round(best / plain, 3),
                "tau": round(statistics.mean(r[f"{setting}_tau"][0] for r in chosen), 3),
                "identical": all(r[f"{setting}_identical"] for r in chosen),
            }
        summary[name] = entry
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
    for flag in SETTINGS.values():  # each setting's costs measured (or read from the cache) before any timing
        os.environ[ONEDNN_ENV] = flag
        load_profile(target, drafter, max_tokens=17)
    os.environ[ONEDNN_ENV] = "1"
    rows = []
    for name in args.sets:
        for prompt in read_eval_prompts(EVAL_DIR / f"{name}.jsonl", args.limit):
            inputs = encode_prompt(tokenizer, prompt, target.device)
            timed_generate(target, inputs, 0, max_new_tokens=16, do_sample=False)  # warm-up
            plain, plain_s = timed_generate(target, inputs, 0, max_new_tokens=args.max_new_tokens, do_sample=False)
            with onednn_linears(target):
                swapped, swapped_s = timed_generate(
                    target, inputs, 0, max_new_tokens=args.max_new_tokens, do_sample=False
                )  # fmt: skip
            row = {
                "set": name, "new_tokens": len(plain), "plain_tok_s": len(plain) / plain_s,
                "plain_onednn_tok_s": len(swapped) / swapped_s,
                "plain_onednn_identical": swapped.tolist() == plain.tolist(),
            }  # fmt: skip
            for setting in ("mkl", "onednn", "onednn", "mkl"):
                os.environ[ONEDNN_ENV] = SETTINGS[setting]
                out, seconds = timed_generate(
                    target, inputs, 0, max_new_tokens=args.max_new_tokens, do_sample=False, assistant_model=drafter,
                    prompt_lookup_num_tokens=16,
                )  # fmt: skip
                row.setdefault(setting, []).append(len(out) / seconds)
                row.setdefault(f"{setting}_tau", []).append(drafter.stats.tau)
                row[f"{setting}_identical"] = row.get(f"{setting}_identical", True) and out.tolist() == plain.tolist()
            os.environ[ONEDNN_ENV] = "1"
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "summary": summarize(rows), "rows": rows, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "cpu_threads": torch.get_num_threads(), "command": "python bench/session14_2026-12-03/cpu_onednn_ab.py",
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
