"""How the prompts of the session-17 H200 data stage were made (run locally from the session-11 list,
`.gpu/extra/prompts_session11.jsonl.gz`; the output went to the GPU, not into git): the prompts of that list that no
run has answered — run 6 answered the first 11 264 of the prompts that fit 384 tokens, and the list's first 32 025
were then unanswered — with ShareGPT turns about code or arithmetic first, two of them to one other turn (session 10's
patterns), then the rest. Same source, no eval prompt."""

import gzip
import json
import sys
from pathlib import Path

from dspark_hf.targets import load_target
from dspark_hf.training.data import encode_prompt

here = Path(__file__).parent
patterns: dict = {}  # session 10's CODE and MATH: that script's head, up to where it reads its own list
exec((here.parent / "session10_2026-12-02" / "h200_prompts.py").read_text().split("prompts = ")[0], patterns)
CODE, MATH = patterns["CODE"], patterns["MATH"]

prompts = [json.loads(line)["prompt"] for line in gzip.open(sys.argv[1], "rt")]
_, tokenizer = load_target(None)
fits = [i for i, p in enumerate(prompts[:32025]) if len(encode_prompt(tokenizer, p, "cpu")["input_ids"][0]) <= 384]
fresh = [prompts[i] for i in fits[11264:]]
topical = [p for p in fresh if CODE.search(p) or MATH.search(p)]
other = [p for p in fresh if not (CODE.search(p) or MATH.search(p))]
mixed = []
while topical:
    mixed += topical[:2] + other[:1]
    topical, other = topical[2:], other[1:]
mixed += other
Path(sys.argv[2]).write_text("".join(json.dumps({"prompt": p}) + "\n" for p in mixed))
print(
    len(fits),
    "of the first 32025 fit;",
    len(fresh),
    "unanswered written,",
    len(mixed) - len(other),
    "in the topical mix",
)
