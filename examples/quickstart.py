"""Quickstart: the same tokens as plain generate(), drafted by DSpark, and how much faster.

    python examples/quickstart.py [--drafter PATH_OR_HUB_ID] [--max-new-tokens N] [--prompt TEXT]

Without --drafter it uses the shipped SmolLM2 drafter (from the Hub, or model_cards/ in this repository offline).
Both runs are timed in this process after one warm-up each (the first DSpark call measures this device's costs).
"""

import argparse

import dspark_hf
from dspark_hf.targets import timed_generate

parser = argparse.ArgumentParser()
parser.add_argument("--drafter", default=None, help="drafter folder or Hub id (default: the shipped SmolLM2 drafter)")
parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate (default: 128)")
parser.add_argument(
    "--prompt", default="Write a Python function that returns the n-th Fibonacci number.", help="the user message"
)
args = parser.parse_args()

target, tokenizer = dspark_hf.load_target()  # SmolLM2-135M-Instruct: Hub first, the GGUF build offline
drafter, _ = dspark_hf.load_drafter(args.drafter, target)  # or AutoModel.from_pretrained(path_or_hub_id)

messages = [{"role": "user", "content": args.prompt}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
inputs = inputs.to(target.device)
settings = dict(max_new_tokens=args.max_new_tokens, do_sample=False)

for _ in range(2):  # the second pass is the one reported: the first warms up (and profiles the device once)
    plain, plain_s = timed_generate(target, inputs, seed=0, **settings)
    fast, fast_s = timed_generate(target, inputs, seed=0, assistant_model=drafter, **settings)

print(tokenizer.decode(fast, skip_special_tokens=True))
print()
print(f"identical to plain generate(): {'yes' if fast.tolist() == plain.tolist() else 'NO'}")
print(
    f"plain {len(plain) / plain_s:.1f} tok/s · DSpark {len(fast) / fast_s:.1f} tok/s · speed-up {plain_s / fast_s:.2f}×"
)
print(drafter.stats)
