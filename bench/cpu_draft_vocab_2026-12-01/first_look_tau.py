"""First look (session 6): greedy tau of the shipped drafter by draft-vocabulary size, replayed; its log is beside it.
Reads /tmp/sharegpt_counts.pt from first_look_counts.py. Run: python first_look_tau.py 10 (from the repository root)."""

import json
import sys

import torch

import dspark_hf
from dspark_hf.drafters import load_drafter
from dspark_hf.evaluation.acceptance import replay_rounds, summarize_rounds
from dspark_hf.targets import encode_prompt, eos_ids, generate_continuations
from dspark_hf.training.draft_vocab import most_frequent

target, tok = dspark_hf.load_target()
drafter, _ = load_drafter(None, target)
counts = torch.load("/tmp/sharegpt_counts.pt")
eos = eos_ids(target, tok)
sizes = [None, 32768, 16384, 8192, 4096]
n = int(sys.argv[1])
res = {}
for name in ["gsm8k", "humaneval", "mt-bench"]:
    prompts = [json.loads(line)["turns"][0] for line in open(f"../shared/data/eval/{name}.jsonl").readlines()[:n]]
    enc = [encode_prompt(tok, p, "cpu")["input_ids"][0].tolist() for p in prompts]
    conts = generate_continuations(target, tok, enc, max_new_tokens=256, do_sample=False)
    for size in sizes:
        drafter.set_draft_vocab(None if size is None else most_frequent(counts, size, always=eos))
        stats = [
            replay_rounds(target, drafter, torch.tensor(p + c), len(p), 256, eos)
            for p, c in zip(enc, conts, strict=True)
        ]
        s = summarize_rounds(stats)
        res[f"{name}/{size}"] = s["tau"]
        print(name, size, round(s["tau"], 4), flush=True)
json.dump(res, open("/tmp/dv_tau.json", "w"))
