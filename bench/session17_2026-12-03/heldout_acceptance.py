"""Teacher-forced acceptance of a drafter by block position on target-written data, every anchor of every response:
mean 1 - TV(q, p) (what speculative sampling accepts, the quantity training reports as acceptance_k), greedy argmax
agreement with the full vocabulary and with the draft vocabulary, and the greedy chain (a round's k-th draft counts only
if all before it match) with its tau. Session 17 (CPU, fp32 target) ran it on

  dspark prepare-data --prompts P --output D --max-new-tokens 160 --batch-size 12 --device cpu --dtype float32

for P = the first turns of rows 80-91 of ../shared/data/eval/gsm8k.jsonl and humaneval.jsonl (past the 80 prompts the
evals use; MT-Bench has no more), one file split by set afterwards, and P = sharegpt --limit 24, then

  python bench/session17_2026-12-03/heldout_acceptance.py D/data.jsonl model_cards/SmolLM2-135M-Instruct-DSpark

-> heldout_gsm8k_80-91.txt, heldout_humaneval_80-91.txt, heldout_sharegpt24.txt.
"""

import json
import sys

import torch

from dspark_hf.drafters import load_drafter
from dspark_hf.targets import load_target
from dspark_hf.training.forward import block_outputs


def row(name: str, values: torch.Tensor, tau: float | None = None) -> str:
    cells = " ".join(f"{float(v):.3f}" for v in values)
    return f"{name:<14}{cells}" + (f" tau {tau:.2f}" if tau is not None else "")


def main(data: str, drafter_path: str) -> None:
    torch.manual_seed(0)
    target, _ = load_target(None)
    drafter, _ = load_drafter(drafter_path, target)
    in_vocab = torch.zeros(drafter.config.vocab_size, dtype=torch.bool)
    in_vocab[torch.tensor(drafter.config.draft_vocab)] = True
    gamma = drafter.config.block_size
    sums = {key: torch.zeros(gamma) for key in ("one_minus_tv", "match_full", "match_vocab", "count")}
    chains = {key: torch.zeros(gamma) for key in ("full", "vocab")}
    covered = labelled = blocks = 0
    with torch.no_grad():
        for line in open(data):
            record = json.loads(line)
            ids, loss_mask = torch.tensor([record["input_ids"]]), torch.tensor([record["loss_mask"]])
            anchors = loss_mask[0, 1:].nonzero().flatten()[None]  # every position whose next token is a response's
            out = block_outputs(drafter, target, ids, anchors)
            trained = loss_mask.bool().gather(1, out["label_positions"].flatten(1)).view_as(out["valid"])
            valid = out["valid"] & trained
            q, p = out["draft_logits"].float(), out["target_logits"].float()
            tv = 0.5 * (q.softmax(-1) - p.softmax(-1)).abs().sum(-1)
            best = p.argmax(-1)
            match_full = q.argmax(-1) == best
            match_vocab = q.masked_fill(~in_vocab, float("-inf")).argmax(-1) == best
            weight = valid.float()
            sums["one_minus_tv"] += ((1 - tv) * weight).sum((0, 1))
            sums["match_full"] += (match_full * weight).sum((0, 1))
            sums["match_vocab"] += (match_vocab * weight).sum((0, 1))
            sums["count"] += weight.sum((0, 1))
            covered += int((in_vocab[out["labels"]] & valid).sum())
            labelled += int(valid.sum())
            whole = valid.all(-1)[0]  # blocks whose every position is a response token: the greedy chain
            chains["full"] += torch.cumprod(match_full[0][whole].float(), -1).sum(0)
            chains["vocab"] += torch.cumprod(match_vocab[0][whole].float(), -1).sum(0)
            blocks += int(whole.sum())
    print(f"anchors {blocks} draft-vocab coverage of labels {covered / labelled:.3f}")
    print(row("1-TV", sums["one_minus_tv"] / sums["count"]))
    print(row("argmax full", sums["match_full"] / sums["count"]))
    print(row("argmax dvocab", sums["match_vocab"] / sums["count"]))
    for key, name in (("full", "chain full"), ("vocab", "chain dvocab")):
        chain = chains[key] / blocks
        print(row(name, chain, 1 + float(chain.sum())))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
