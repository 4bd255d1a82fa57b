"""Drafting with and without CUDA graphs (DSPARK_CUDA_GRAPHS), same process, same prompts, ABAB order: tokens/s,
drafting ms per round, new tokens per round, and whether every output equals plain generate()'s (h200_job.sh)."""

import json
import os
import statistics
import sys

import torch
from transformers import AutoModel

import dspark_hf
from dspark_hf.targets import encode_prompt, timed_generate

data, drafter_path, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
target, tokenizer = dspark_hf.load_target()
drafter = AutoModel.from_pretrained(drafter_path)
prompts = [json.loads(line)["turns"][0] for line in open(data)][:limit]
encoded = [encode_prompt(tokenizer, p, target.device) for p in prompts]
common = dict(max_new_tokens=256, do_sample=False, pad_token_id=tokenizer.pad_token_id)
plain = [timed_generate(target, e, 0, **common)[0].tolist() for e in encoded]
rows = {"1": [], "0": []}
for graphs in ["1", "0", "1", "0", "1", "0"]:  # first pair: warm-up (Triton compile, profile), not counted
    os.environ["DSPARK_CUDA_GRAPHS"] = graphs
    tokens = seconds = rounds = draft = 0
    same = True
    for e, reference in zip(encoded, plain, strict=True):
        out, elapsed = timed_generate(target, e, 0, assistant_model=drafter, **common)
        same &= out.tolist() == reference
        tokens, seconds = tokens + len(out), seconds + elapsed
        rounds, draft = rounds + drafter.stats.rounds, draft + drafter.stats.draft_time_s
    rows[graphs].append(
        {
            "tok_s": tokens / seconds,
            "draft_ms_per_round": 1e3 * draft / rounds,
            "tokens_per_round": tokens / rounds,
            "identical": same,
        }
    )
result = {
    g: {k: statistics.median(r[k] for r in runs[1:]) if k != "identical" else all(r[k] for r in runs) for k in runs[0]}
    for g, runs in rows.items()
}
result["runs"] = rows
result["versions"] = [torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"]
print(json.dumps(result))
