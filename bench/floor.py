"""The floor of DSpark's speed: a call whose scheduler almost never drafts, against plain `generate()`.

Where drafting does not pay the scheduler waits 1, 2, 4 ... 32 rounds between drafts, and the call runs plain
one-token rounds through the assisted loop. This times such a call (drafting made to cost 10 s in the scheduler's
plan, so it drafts only to look again) beside plain `generate()` on the same prompt, greedy and sampled, passes
alternating, medians after a warm-up pass, through each loop (Transformers' assisted loop and the static loop,
`$DSPARK_STATIC_LOOP`). What it loses is the loop's own cost: the lower bound of the demo's ratio on prompts where
drafting never pays.

    python bench/floor.py [--max-new-tokens 128] [--passes 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import dspark_hf
from dspark_hf import PrefixScheduler
from dspark_hf.drafters import load_drafter

PROMPT = "Tell me about the history of tea in a few paragraphs."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=128, help="(default 128)")
    parser.add_argument("--passes", type=int, default=3, help="timed passes after the warm-up (default 3)")
    args = parser.parse_args()
    target, tokenizer = dspark_hf.load_target(device="cpu")
    drafter, _ = load_drafter(None, target)
    chat = [{"role": "user", "content": PROMPT}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt").input_ids
    for sample in (False, True):
        settings = dict(max_new_tokens=args.max_new_tokens, do_sample=sample, attention_mask=torch.ones_like(ids),
                        pad_token_id=tokenizer.eos_token_id, **({"temperature": 0.7} if sample else {}))  # fmt: skip
        rates: dict[str, list[float]] = {"plain": [], "transformers": [], "static": []}
        for rep in range(args.passes + 1):
            for name in rates:
                extra = {} if name == "plain" else {"assistant_model": drafter}
                if extra:
                    extra["gating"] = PrefixScheduler([0.04] * 9, draft_s=10.0)
                    os.environ["DSPARK_STATIC_LOOP"] = "1" if name == "static" else "0"
                torch.manual_seed(rep)
                started = time.perf_counter()
                out = target.generate(ids, **settings, **extra)
                seconds = time.perf_counter() - started
                if rep:
                    rates[name].append((out.shape[1] - ids.shape[1]) / seconds)
        plain = statistics.median(rates["plain"])
        loops = [name for name in rates if name != "plain"]
        waits = ", ".join(f"{name} loop {statistics.median(rates[name]) / plain:.3f}x" for name in loops)
        print(f"{'sampled' if sample else 'greedy'}: plain {plain:.1f} tok/s; a call that waits: {waits}")


if __name__ == "__main__":
    main()
