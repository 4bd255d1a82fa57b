"""Plain decoding as fast as Transformers makes it, beside plain eager generate() and DSpark (static loop): the
static cache with Transformers' automatic torch.compile of the decoding step (`cache_implementation="static"`).
Same prompts, greedy, 256 new tokens, after a warm-up that includes compilation; prints one JSON line.
Usage: python compiled_plain.py EVAL.jsonl N_PROMPTS"""

import json
import sys
import time

import torch

from dspark_hf import load_drafter, load_target
from dspark_hf.targets import encode_prompt


def timed(target, inputs, **kwargs):
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = target.generate(**inputs, max_new_tokens=256, do_sample=False, **kwargs)
    torch.cuda.synchronize()
    return out[0, inputs["input_ids"].shape[1] :].tolist(), time.perf_counter() - started


def main() -> None:
    target, tokenizer = load_target(None, device="cuda")
    drafter, _ = load_drafter(None, target)
    rows = [json.loads(line) for line in open(sys.argv[1])][: int(sys.argv[2])]
    prompts = [encode_prompt(tokenizer, row["turns"][0], target.device) for row in rows]
    methods = {
        "plain": {},
        "plain_static_compiled": {"cache_implementation": "static"},
        "dspark_lookup": {"assistant_model": drafter, "prompt_lookup_num_tokens": 16},
    }
    started = time.perf_counter()
    for kwargs in methods.values():  # warm-up, compilation included
        timed(target, prompts[0], **kwargs)
    warm_s = time.perf_counter() - started
    report = {}
    for name, kwargs in methods.items():
        outs, tokens, seconds = [], 0, 0.0
        for inputs in prompts:
            new, elapsed = timed(target, inputs, **kwargs)
            outs.append(new)
            tokens += len(new)
            seconds += elapsed
        report[name] = {"tok_s": tokens / seconds, "outputs": outs}
    plain = report["plain"]["outputs"]
    for name in methods:
        report[name]["speedup_vs_plain"] = report[name]["tok_s"] / report["plain"]["tok_s"]
        report[name]["identical_to_plain"] = report[name].pop("outputs") == plain
    print(json.dumps({"warm_up_s": warm_s, "prompts": len(prompts), "methods": report}))


if __name__ == "__main__":
    main()
