"""Would drafting in bfloat16 pay on the 2-core CPU (avx512_bf16)? The scheduler's own timing of a drafting round
(`measure_draft`), 3 times 9 repeats, with the shipped drafter as generation runs it (float32, the target's dtype) and
cast to bfloat16 (its LM-head / Markov rows too). Ad hoc: bfloat16 drafting is not a supported mode.
Usage: python bench/session18_2026-12-03/cpu_bf16_drafting.py"""

import torch

import dspark_hf.modeling_dspark as modeling
from dspark_hf import scheduler
from dspark_hf.drafters import load_drafter
from dspark_hf.targets import load_target

target, _ = load_target(None, device="cpu")
drafter, _ = load_drafter(None, target)
rows = modeling.DSparkDrafter._draft_vocab_rows


def rows_in_drafter_dtype(self):
    ids, *weights = rows(self)
    return ids, *(None if w is None else w.to(self.dtype) for w in weights)


with torch.no_grad():
    for label in ("float32", "bfloat16"):
        if label == "bfloat16":
            modeling.DSparkDrafter._draft_vocab_rows = rows_in_drafter_dtype
            drafter.to(torch.bfloat16)
        for _ in range(3):
            print(label, f"{1000 * scheduler.measure_draft(target, drafter, repeats=9):.2f} ms")
