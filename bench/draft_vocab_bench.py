"""What the draft vocabulary and the scheduler's "drafting must pay" rule do to DSpark's speed, in one process.

Rows, on the same prompts and target, after a warm-up of each, the order rotating per pass, medians over passes:
  plain               `generate()` alone
  whole_vocab         the shipped drafter without its draft vocabulary, scheduler never skipping drafting (as before)
  draft_vocab         with its draft vocabulary, scheduler never skipping drafting
  dspark              with its draft vocabulary and the scheduler's default (skips drafting that does not pay)
Every row's greedy output must equal plain's. Usage:
  python bench/draft_vocab_bench.py --data ../shared/data/eval/gsm8k.jsonl --limit 3 --out bench/DIR/NAME
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import dspark_hf
from dspark_hf.decoding.routing import make_gating
from dspark_hf.drafters import load_drafter
from dspark_hf.evaluation import read_eval_prompts
from dspark_hf.evaluation.report import environment
from dspark_hf.targets import encode_prompt, timed_generate


def variants(drafter) -> dict[str, tuple[list[int] | None, int]]:
    """Row -> (draft vocabulary, max_idle_rounds of the scheduler)."""
    vocab = drafter.config.draft_vocab
    if vocab is None:
        raise SystemExit("this drafter has no draft vocabulary (dspark draft-vocab makes one)")
    return {"whole_vocab": (None, 0), "draft_vocab": (vocab, 0), "dspark": (vocab, 32)}


def render(report: dict) -> str:
    """The markdown table of a report (also: `--render OUT.json` redraws it from a saved report)."""
    lines = [
        f"{Path(report['data']).stem}, {report['prompts']} prompts x {report['max_new_tokens']} tokens, "
        f"{report['repeats']} passes, {report['device']}, torch {report['torch']}, transformers "
        f"{report['transformers']}, {report['date']}",
        f"command: `{report['command']}`",
        "",
        "| row | tok/s | speed-up | identical | rounds verifying drafts / rounds | accepted drafts | drafting-side ms "
        "per round |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, m in report["methods"].items():
        extra = (
            f"{m['drafting_rounds']} / {m['rounds']} | {m['accepted']} | {1e3 * m['draft_s'] / m['rounds']:.1f}"
            if "rounds" in m
            else "| |"
        )
        lines.append(f"| {n} | {m['tok_s']:.2f} | {m['speedup']:.2f}x | {m['identical']} | {extra} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--limit", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--drafter", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    parser.add_argument("--render", default=None, help="only print the table of a saved OUT.json")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return 0
    target, tokenizer = dspark_hf.load_target(device=args.device)
    drafter, _ = load_drafter(args.drafter, target)
    rows = variants(drafter)
    prompts = [encode_prompt(tokenizer, p, target.device) for p in read_eval_prompts(args.data, args.limit)]
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)

    def kwargs(name: str) -> dict:
        if name == "plain":
            return {}
        vocab, idle = rows[name]
        drafter.set_draft_vocab(vocab)
        scheduler = make_gating("scheduler", target=target, drafter=drafter)  # this drafting shape's costs
        scheduler.max_idle_rounds = idle
        return {"assistant_model": drafter, "gating": scheduler}

    names = ["plain", *rows]
    for name in names:  # warm-up, and every cost profile measured before timing starts
        timed_generate(target, prompts[0], 0, **dict(common, max_new_tokens=16), **kwargs(name))
    rates: dict[str, list[float]] = {n: [] for n in names}
    outputs: dict[str, list[list[int]]] = {n: [] for n in names}
    stats: dict[str, dict[str, float]] = {n: {"rounds": 0, "drafting": 0, "accepted": 0, "draft_s": 0.0} for n in names}
    for rep in range(args.repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        tokens, seconds = dict.fromkeys(names, 0), dict.fromkeys(names, 0.0)
        for i, inputs in enumerate(prompts):
            for name in order:
                out, elapsed = timed_generate(target, inputs, i, **common, **kwargs(name))
                tokens[name] += len(out)
                seconds[name] += elapsed
                if rep == 0:
                    outputs[name].append(out.tolist())
                    if name != "plain":
                        s = drafter.stats
                        stats[name]["rounds"] += s.rounds
                        stats[name]["drafting"] += sum(1 for v in s.verified_per_round if v > 0)
                        stats[name]["accepted"] += s.accepted_tokens
                        stats[name]["draft_s"] += s.draft_time_s
        for name in names:
            rates[name].append(tokens[name] / seconds[name])
        print(f"pass {rep + 1}: " + ", ".join(f"{n} {rates[n][-1]:.2f} tok/s" for n in names), file=sys.stderr)
    plain = statistics.median(rates["plain"])
    report = {
        "methods": {
            n: {
                "tok_s": statistics.median(rates[n]),
                "speedup": statistics.median(rates[n]) / plain,
                "identical": outputs[n] == outputs["plain"],
                "tok_s_per_pass": rates[n],
                **(
                    {
                        "rounds": stats[n]["rounds"],
                        "drafting_rounds": stats[n]["drafting"],
                        "accepted": stats[n]["accepted"],
                        "draft_s": stats[n]["draft_s"],
                    }
                    if n != "plain"
                    else {}
                ),
            }
            for n in names
        },
        "draft_vocab_size": len(drafter.config.draft_vocab or []) or None,
        "data": args.data,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        **environment(target.device),
        "command": shlex.join(["python", *sys.argv]),
    }
    table = render(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(json.dumps(report, indent=1))
        Path(f"{args.out}.md").write_text(table + "\n")
    print(table)
    return 0 if all(m["identical"] for m in report["methods"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
