"""What the scheduler decides on a GPU, replayed on the CPU: the static loop with the real target and drafter, its
rounds timed on a device's measured round costs instead of the wall clock.

A GPU's rounds cost what `dspark bench`'s profile pass recorded phase by phase (`round_phases` in its JSON: append
context, draft, verify n, accept). Here the static loop runs on the CPU (greedy, so the tokens and the drafter's
forecasts are those of the GPU run up to float noise), the scheduler plans with those verification costs, and
`observe` is told what each round would have taken there. So the scheduler's choices — how many drafts a round
verifies, when drafting waits — can be followed round by round without a GPU, and a change to them measured before
it goes to the device. Modelled tokens per second are set beside one compiled plain step from the same record.

    python bench/scheduler_replay.py --costs bench/results/h200_bench_mt-bench.json --variants as-is no-watch
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
from pathlib import Path
from unittest import mock

os.environ.setdefault("DSPARK_STATIC_LOOP", "1")  # the GPU's loop, run uncaptured on the CPU

import torch  # noqa: E402

import dspark_hf  # noqa: E402
from dspark_hf import PrefixScheduler  # noqa: E402
from dspark_hf.decoding import round as round_module  # noqa: E402
from dspark_hf.drafters import load_drafter  # noqa: E402
from dspark_hf.evaluation import read_eval_prompts  # noqa: E402

# open requests of the kinds MT-Bench holds, in other words (the eval prompts are for evaluation, not for tuning)
CHAT_PROMPTS = [
    "Could you give me some advice on how to keep a small vegetable garden alive through a hot, dry summer?",
    "Write a friendly email to my neighbours inviting them to a street picnic next Saturday afternoon.",
    "What are the main differences between a cold and the flu, and when should someone see a doctor?",
    "Describe a day in the life of a lighthouse keeper in the 1900s, as a short story.",
    "I am starting to learn the guitar. How should I structure my practice during the first month?",
]


def device_costs(path: Path) -> tuple[dict[int, float], float, float, float, str]:
    """(verify seconds by tokens, seconds a round spends beside verifying, drafting's seconds, one compiled plain
    step's seconds, the device) from a `dspark bench` record with a profile pass."""
    record = json.loads(path.read_text())
    phases: dict[str, list[float]] = {}
    for method in record["methods"].values():
        for phase, (seconds, times) in (method.get("profile") or {}).get("round_phases", {}).items():
            total = phases.setdefault(phase, [0.0, 0])
            total[0], total[1] = total[0] + seconds, total[1] + times
    each = {phase: seconds / times for phase, (seconds, times) in phases.items() if times}
    verify = {int(phase.split()[1]): s for phase, s in each.items() if phase.startswith("verify ")}
    known = sorted(verify)
    for n in range(1, max(known) + 1):  # lengths no round verified: between their neighbours
        if n not in verify:
            below, above = max(k for k in known if k < n), min(k for k in known if k > n)
            verify[n] = verify[below] + (verify[above] - verify[below]) * (n - below) / (above - below)
    plain_step = 1.0 / record["methods"]["plain_compiled"]["tok_s"]
    beside = each.get("keep context", each.get("append context", 0.0)) + each["accept"]  # (the older records' name)
    return dict(sorted(verify.items())), beside, each["draft"], plain_step, record["device"]


class ReplayedScheduler(PrefixScheduler):
    """The scheduler on the device's costs, told what each round would have taken there."""

    def __init__(self, verify: dict[int, float], beside_s: float, draft_s: float, watch_rounds: bool):
        super().__init__([verify[n] for n in sorted(verify)], draft_s, look_ahead=True, watch_rounds=watch_rounds)
        self.verify, self.beside_s = verify, beside_s
        self.device_s = 0.0  # the rounds' modelled seconds so far
        self.rounds: list[tuple[int, bool]] = []  # (tokens verified, drafted) of each round

    def observe(self, tokens: int, seconds: float, drafted: bool) -> None:
        seconds = self.beside_s + self.verify[min(tokens, len(self.verify))] + (self.draft_s if drafted else 0.0)
        self.device_s += seconds
        self.rounds.append((tokens, drafted))
        super().observe(tokens, seconds, drafted)


def replay(target, tokenizer, drafter, prompt: str, costs, variant: str, max_new_tokens: int) -> dict:
    verify, beside_s, draft_s, plain_step, _ = costs
    policy = ReplayedScheduler(verify, beside_s, draft_s, watch_rounds=variant != "no-watch")
    chat = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt").input_ids
    # the ablation: the drafter's forecast as it is, not scaled by how this call's drafts fared
    uncorrected = mock.patch.object(round_module.Drafting, "corrected", lambda self, probs: list(probs))
    with uncorrected if variant == "no-correction" else contextlib.nullcontext(), torch.no_grad():
        out = target.generate(
            ids, attention_mask=torch.ones_like(ids), assistant_model=drafter, gating=policy, do_sample=False,
            max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
    stats = drafter.stats
    new = out.shape[1] - ids.shape[1]
    drafting = sum(drafted for _, drafted in policy.rounds)
    return {
        "new_tokens": new,
        "tau": stats.tau,
        "rounds": stats.rounds,
        "drafting_rounds": drafting / max(1, len(policy.rounds)),
        "mean_verified": statistics.mean(tokens - 1 for tokens, _ in policy.rounds) if policy.rounds else 0.0,
        "vs_compiled_plain": new * plain_step / policy.device_s if policy.device_s else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--costs", required=True, help="a `dspark bench` JSON record with its profile pass")
    parser.add_argument("--data", default=None, help="prompts from this JSONL instead of the built-in chat requests")
    parser.add_argument("--limit", type=int, default=5, help="prompts (default 5)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="(default 256)")
    parser.add_argument(
        "--variants", nargs="+", default=["as-is", "no-watch", "no-correction"],
        help="as-is; no-watch (the scheduler does not watch what rounds take); no-correction (the drafter's forecasts "
        "as given) (default: all)",
    )  # fmt: skip
    parser.add_argument("--out", default=None, help="write the results here (JSON)")
    args = parser.parse_args()

    costs = device_costs(Path(args.costs))
    prompts = read_eval_prompts(Path(args.data), args.limit) if args.data else CHAT_PROMPTS[: args.limit]
    target, tokenizer = dspark_hf.load_target(device="cpu")
    drafter, _ = load_drafter(None, target)
    verify, longest = costs[0], len(costs[0])
    print(f"costs of {costs[4]}: verify 1 {verify[1] * 1e3:.2f} ms, {longest} {verify[longest] * 1e3:.2f} ms; "
          f"a compiled plain step {costs[3] * 1e3:.2f} ms")  # fmt: skip
    results = {}
    for variant in args.variants:
        runs = [replay(target, tokenizer, drafter, p, costs, variant, args.max_new_tokens) for p in prompts]
        results[variant] = runs
        summary = {k: statistics.median(r[k] for r in runs) for k in ("tau", "drafting_rounds", "vs_compiled_plain")}
        print(f"{variant:14s} median tau {summary['tau']:.2f}, drafting in {summary['drafting_rounds']:.0%} of rounds, "
              f"{summary['vs_compiled_plain']:.2f}x compiled plain (modelled); per prompt: "
              + " ".join(f"{r['tau']:.2f}/{r['drafting_rounds']:.0%}" for r in runs), flush=True)  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"costs": args.costs, "results": results}, indent=1))


if __name__ == "__main__":
    main()
