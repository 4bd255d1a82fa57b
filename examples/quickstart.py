"""Quickstart: the same tokens as plain generate(), drafted by DSpark.

    python examples/quickstart.py [--drafter PATH_OR_HUB_ID] [--max-new-tokens N]

Without --drafter an untrained drafter is built from the target: the output is still exactly the target's, but its
drafts are rarely accepted (tau near 1).
"""

import argparse

from transformers import AutoModel

import dspark_hf

parser = argparse.ArgumentParser()
parser.add_argument("--drafter", default=None)
parser.add_argument("--max-new-tokens", type=int, default=64)
args = parser.parse_args()

target, tokenizer = dspark_hf.load_target()  # SmolLM2-135M-Instruct: Hub first, the GGUF build offline
if args.drafter:
    drafter = AutoModel.from_pretrained(args.drafter)
else:
    drafter = dspark_hf.DSparkDrafter.from_target(target)

messages = [{"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
inputs = inputs.to(target.device)

plain = target.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
fast = target.generate(**inputs, assistant_model=drafter, max_new_tokens=args.max_new_tokens, do_sample=False)

print(tokenizer.decode(fast[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
print("identical to plain generate():", fast.tolist() == plain.tolist())
print("stats:", {k: v for k, v in drafter.stats.as_dict().items() if k != "accepted_per_round"})
