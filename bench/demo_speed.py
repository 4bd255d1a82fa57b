"""Is the demo ever slower than the target alone? Its own side-by-side run on its examples and on held-out prompts.

For every demo temperature, each prompt goes through `SideBySide.run` (space/app.py) exactly as the Run button sends it
(scheduler, prompt lookup beside the drafter, the default 128 new tokens): the target alone, then target + DSpark, each
timed as the demo times it. Per set and temperature: the median and the lowest speed-up, and how many prompts ran
slower than the target alone. For the demo's examples the same prompts also go through `dspark bench`'s timing
(`evaluation.bench.benchmark`, the `dspark_lookup` row), so the demo's figure can be set beside the bench's.

    python bench/demo_speed.py --limit 10 --out bench/results/cpu_demo_speed
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "space"))

import app  # noqa: E402

import dspark_hf  # noqa: E402
from dspark_hf.drafters import load_drafter  # noqa: E402
from dspark_hf.evaluation import read_eval_prompts  # noqa: E402
from dspark_hf.evaluation.bench import benchmark  # noqa: E402
from dspark_hf.evaluation.report import environment  # noqa: E402

SETS = {"gsm8k": "Math", "humaneval": "Code", "mt-bench": "Chat"}


def side_by_side(demo: app.SideBySide, prompt: str, max_new_tokens: int, temperature: float) -> dict:
    for _ in demo.run(prompt, max_new_tokens, temperature, "scheduler", lookup=True):
        pass
    return dict(demo.last)


def summary(runs: list[dict]) -> dict:
    speedups = [r["speedup"] for r in runs]
    return {
        "prompts": len(runs),
        "median_speedup": statistics.median(speedups),
        "min_speedup": min(speedups),
        "slower": sum(s < 1.0 for s in speedups),
        "identical": None if runs[0]["identical"] is None else all(r["identical"] for r in runs),
        "tau": statistics.median(r["tau"] for r in runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=10, help="held-out prompts per eval set (default 10)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="the demo's default (default 128)")
    parser.add_argument("--eval-dir", default=str(app.env.eval_dir(ROOT.parent / "shared" / "data" / "eval")))
    parser.add_argument(
        "--sets", nargs="+", default=["examples", *SETS], help="examples and/or eval sets (default: all)"
    )
    parser.add_argument("--temperatures", nargs="+", default=list(app.TEMPERATURES), help="(default: every demo one)")
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()

    target, tokenizer = dspark_hf.load_target()
    drafter, trained = load_drafter(None, target)
    demo = app.SideBySide(target, tokenizer, drafter, trained)
    side_by_side(demo, "Hello", 8, 0.0)  # warm-up: the cost profile, kernels, allocator
    sets = {"demo examples": [text for _, _, text in app.EXAMPLES]} if "examples" in args.sets else {}
    for name in SETS:
        if name in args.sets:
            sets[name] = read_eval_prompts(Path(args.eval_dir) / f"{name}.jsonl", args.limit)

    record: dict = {"max_new_tokens": args.max_new_tokens, "gating": "scheduler", "lookup": app.LOOKUP_TOKENS}
    record["results"] = results = {}
    for label in args.temperatures:
        value = app.TEMPERATURES[label]
        for set_name, prompts in sets.items():
            runs = [side_by_side(demo, p, args.max_new_tokens, value) for p in prompts]
            results[f"{set_name} @ {label}"] = {"temperature": value, **summary(runs), "runs": runs}
            print(f"{set_name} @ {label}: {results[f'{set_name} @ {label}']['median_speedup']:.2f}x", flush=True)
        if "demo examples" not in sets:
            continue
        bench = benchmark(
            target, tokenizer, sets["demo examples"], {"dspark": drafter}, max_new_tokens=args.max_new_tokens,
            temperature=value, repeats=1, prompt_lookup_tokens=app.LOOKUP_TOKENS, only=["dspark_lookup"],
            profile_prompts=1, compiled=False,
        )  # fmt: skip
        results[f"demo examples @ {label}"]["bench_speedup"] = bench["methods"]["dspark_lookup"]["speedup"]
    record.update(environment(target.device))
    record["command"] = "python " + " ".join(sys.argv)

    lines = [
        "# The demo against the target alone",
        "",
        f"`SideBySide.run` as the Run button sends it: scheduler, prompt lookup ({app.LOOKUP_TOKENS}), "
        f"{args.max_new_tokens} new tokens. Speed-up = target + DSpark tok/s / target alone tok/s, per prompt.",
        "",
        "| prompts @ temperature | prompts | median speed-up | lowest | slower than alone | τ | identical | "
        "`dspark bench` on the same prompts |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, r in results.items():
        identical = "-" if r["identical"] is None else ("yes" if r["identical"] else "NO")
        bench_cell = f"{r['bench_speedup']:.2f}×" if "bench_speedup" in r else ""
        lines.append(
            f"| {key} | {r['prompts']} | {r['median_speedup']:.2f}× | {r['min_speedup']:.2f}× | {r['slower']} | "
            f"{r['tau']:.2f} | {identical} | {bench_cell} |"
        )
    lines += [
        "",
        f"- device: {record['device']}",
        f"- versions: torch {record['torch']}, transformers {record['transformers']}",
        f"- date: {record['date']}",
        f"- command: `{record['command']}`",
    ]
    print("\n".join(lines))
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps(record, indent=1))
        Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
