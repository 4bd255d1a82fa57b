"""A/B on the CPU: greedy DSpark + prompt lookup with the scheduler's look-ahead choosing L over the measured
verification costs as they are (raw) against the same costs made nondecreasing (isotonic, as the profile stored
them). Same process, same prompts, order A B B A per prompt, plain generate() beside them; every output is compared
with plain.

    python bench/session12_2026-12-02/cpu_raw_costs_ab.py --costs bench/session12_2026-12-02/cpu_shapes.json \
        --out bench/session12_2026-12-02/cpu_raw_costs_ab.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import UTC, datetime
from pathlib import Path

import torch
import transformers

from dspark_hf import PrefixScheduler, load_drafter, load_target
from dspark_hf.evaluation.acceptance import read_eval_prompts
from dspark_hf.scheduler import isotonic
from dspark_hf.targets import encode_prompt, timed_generate

EVAL_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "eval"


def scheduler(verify_s: list[float], draft_s: float, raw: bool) -> PrefixScheduler:
    policy = PrefixScheduler(verify_s, draft_s, look_ahead=True)
    if raw:
        policy.measured = list(verify_s)
    return policy


def summarize(rows: list[dict]) -> dict:
    """Per set and policy, as `dspark bench` reports: tokens over seconds summed across prompts for each pass (pass i
    of a policy is its i-th run of every prompt), the median pass, its ratio to plain."""
    summary = {}
    for name in dict.fromkeys(r["set"] for r in rows):
        chosen = [r for r in rows if r["set"] == name]
        tokens = sum(r["new_tokens"] for r in chosen)
        plain = tokens / sum(r["new_tokens"] / r["plain_tok_s"] for r in chosen)
        summary[name] = {"plain_tok_s": round(plain, 2)}
        for label in ("isotonic", "raw"):
            passes = [tokens / sum(r["new_tokens"] / r[label][i] for r in chosen) for i in range(2)]
            summary[name][label] = {
                "tok_s": round(statistics.median(passes), 2),
                "speedup": round(statistics.median(passes) / plain, 3),
                "tau": round(statistics.mean(r[f"{label}_tau"][0] for r in chosen), 3),
                "verified_per_round": round(statistics.mean(r[f"{label}_verified"][0] for r in chosen), 2),
            }
    return summary


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--costs", required=True, help="cpu_shapes.py's output: raw forward and drafting costs")
    parser.add_argument("--limit", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    costs = json.loads(Path(args.costs).read_text())
    raw = [costs["target_forward_ms"][str(n)] / 1e3 for n in range(1, 18)]
    draft_s = costs["draft_round_ms"]["float32"] / 1e3
    target, tokenizer = load_target(device="cpu")
    drafter, _ = load_drafter(None, target)
    rows = []
    for name in ("gsm8k", "humaneval", "mt-bench"):
        for prompt in read_eval_prompts(EVAL_DIR / f"{name}.jsonl", args.limit):
            inputs = encode_prompt(tokenizer, prompt, target.device)
            timed_generate(target, inputs, 0, max_new_tokens=16, do_sample=False)  # warm-up
            plain, plain_s = timed_generate(target, inputs, 0, max_new_tokens=args.max_new_tokens, do_sample=False)
            row = {"set": name, "new_tokens": len(plain), "plain_tok_s": len(plain) / plain_s}
            for label in ("isotonic", "raw", "raw", "isotonic"):
                out, seconds = timed_generate(
                    target, inputs, 0, max_new_tokens=args.max_new_tokens, do_sample=False, assistant_model=drafter,
                    prompt_lookup_num_tokens=16, gating=scheduler(raw, draft_s, raw=label == "raw"),
                )  # fmt: skip
                assert out.tolist() == plain.tolist(), f"{name}: {label} differs from plain"
                row.setdefault(label, []).append(len(out) / seconds)
                row.setdefault(f"{label}_tau", []).append(drafter.stats.tau)
                row.setdefault(f"{label}_verified", []).append(drafter.stats.verified_tokens / drafter.stats.rounds)
            rows.append(row)
            print(json.dumps(row))
    summary = summarize(rows)
    report = {
        "summary": summary,
        "rows": rows,
        "costs_ms": [round(c * 1e3, 2) for c in raw],
        "isotonic_ms": [round(c * 1e3, 2) for c in isotonic(raw)],
        "draft_ms": round(draft_s * 1e3, 2),
        "device": costs["device"],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"python bench/session12_2026-12-02/cpu_raw_costs_ab.py --costs {args.costs} --limit {args.limit} "
        f"--max-new-tokens {args.max_new_tokens} --out {args.out}",
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
