"""Quickstart: the same tokens as plain generate(), drafted by DSpark.

    python examples/quickstart.py [--drafter PATH_OR_HUB_ID] [--max-new-tokens N]

Without --drafter it uses the shipped SmolLM2 drafter (from the Hub, or model_cards/ in this repository offline).
"""

import argparse

import dspark_hf

parser = argparse.ArgumentParser()
parser.add_argument("--drafter", default=None)
parser.add_argument("--max-new-tokens", type=int, default=64)
args = parser.parse_args()

target, tokenizer = dspark_hf.load_target()  # SmolLM2-135M-Instruct: Hub first, the GGUF build offline
drafter, _ = dspark_hf.load_drafter(args.drafter, target)  # or AutoModel.from_pretrained(path_or_hub_id)

messages = [{"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
inputs = inputs.to(target.device)

plain = target.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
fast = target.generate(**inputs, assistant_model=drafter, max_new_tokens=args.max_new_tokens, do_sample=False)

print(tokenizer.decode(fast[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
print("identical to plain generate():", fast.tolist() == plain.tolist())
print("stats:", {k: v for k, v in drafter.stats.as_dict().items() if k != "accepted_per_round"})
