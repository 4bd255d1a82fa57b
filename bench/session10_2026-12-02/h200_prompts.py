"""How the prompts of the session-10 H200 data stage were made (run locally, after
`../session7_2026-12-01/h200_prompts.py` wrote prompts.jsonl; the file went to the GPU, not into git): the prompts
that list holds after position 7 405 (which no run has answered yet), reordered so that ShareGPT turns about code or
arithmetic come first, two of them to one other turn, then the rest. Same source and no eval prompt: only the mix
shifts towards the domains of GSM8K and HumanEval, which random ShareGPT turns cover thinly."""

import json
import re

CODE = re.compile(
    r"```|\bdef \b|\bfunction\b|\bpython\b|\bjavascript\b|\bcode\b|\bclass \b|\bSQL\b|\bscript\b|\bprogram\b"
    r"|\breturn\b|\bimport\b|\bjava\b|\bC\+\+|\balgorithm\b", re.I)  # fmt: skip
MATH = re.compile(
    r"\bcalculate\b|\bhow many\b|\bsolve\b|\bequation\b|\bmath\b|\bpercent|\btotal\b|\d+\s*[-+*/x=]\s*\d+"
    r"|\bprobability\b|\bcost\b|\bprice\b|\baverage\b", re.I)  # fmt: skip

prompts = [json.loads(line)["prompt"] for line in open("prompts.jsonl")][7405:]
topical = [p for p in prompts if CODE.search(p) or MATH.search(p)]
other = [p for p in prompts if not (CODE.search(p) or MATH.search(p))]
mixed = []
while topical:
    mixed += topical[:2] + other[:1]
    topical, other = topical[2:], other[1:]
mixed += other
open("prompts_session10.jsonl", "w").write("".join(json.dumps({"prompt": p}) + "\n" for p in mixed[:20000]))
print(len(prompts), "prompts,", len(mixed) - len(other), "in the topical mix, 20000 written")
