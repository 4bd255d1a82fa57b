"""Session 8 scratch, kept as the record of how the lookup rule was chosen: the shipped drafter's greedy block
at every position of the target's greedy continuations of the first N prompts per eval set (CPU), JSON filed for
cpu_lookup_policies.py. Run from the repository root: python bench/session8_2026-12-02/cpu_lookup_drafts.py 12"""

import json
import sys
from pathlib import Path

import torch

from dspark_hf.drafters import load_drafter
from dspark_hf.evaluation.acceptance import read_eval_prompts
from dspark_hf.targets import encode_prompt, eos_ids, generate_continuations, load_target
from dspark_hf.training.forward import block_outputs

torch.set_num_threads(2)
target, tok = load_target(device="cpu")
drafter = load_drafter("model_cards/SmolLM2-135M-Instruct-DSpark", target)[0]

eos = eos_ids(target, tok)
N = int(sys.argv[1])
out = {}
for name in ["gsm8k", "humaneval", "mt-bench"]:
    prompts = read_eval_prompts(f"../shared/data/eval/{name}.jsonl", limit=N)
    enc = [encode_prompt(tok, p, "cpu")["input_ids"][0].tolist() for p in prompts]
    conts = generate_continuations(target, tok, enc, max_new_tokens=256, do_sample=False)
    rows = []
    for p, c in zip(enc, conts, strict=False):
        seq = torch.tensor(p + c)[None]
        anchors = torch.arange(len(p), seq.shape[1])[None]
        with torch.no_grad():
            blocks = block_outputs(drafter, target, seq, anchors, target_distributions=False)
        logits = blocks["draft_logits"][0]
        ids = torch.tensor(drafter.config.draft_vocab)
        drafts = ids[logits[..., ids].argmax(-1)].tolist()
        rows.append({"prompt_len": len(p), "tokens": seq[0].tolist(), "drafts": drafts})
    out[name] = rows
    print(name, "done", flush=True)
Path(f"lookup_drafts{N}.json").write_text(json.dumps({"eos": sorted(eos), "sets": out}))
