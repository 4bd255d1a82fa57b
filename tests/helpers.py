"""Helpers shared by the tests (fixtures live in conftest.py): tiny random targets, primed drafters, trainers, the
eval prompts, and running a script in a fresh interpreter."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from dspark_hf import DSparkDrafter, env
from dspark_hf.training import DSparkTrainer, DSparkTrainingModel, collate_batch

# ../shared/data/eval beside the checkout; DSPARK_EVAL_DIR overrides it (the GPU machine gets a carried copy)
EVAL_DIR = env.eval_dir(Path(__file__).resolve().parents[2] / "shared" / "data" / "eval")


def tiny_target(vocab_size: int = 32, seed: int = 0, sharp: float = 1.0, **overrides) -> LlamaForCausalLM:
    """A random 6-layer Llama. `sharp` scales the LM head so next-token distributions are peaked, not uniform."""
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    fields.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**fields)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharp)
    model.generation_config.pad_token_id = 0
    return model


def prime_markov_head(drafter: DSparkDrafter, sequences: list[list[int]], scale: float = 60.0) -> DSparkDrafter:
    """Write the most frequent bigrams of `sequences` into the Markov head (one rank slot per previous token).

    Test helper: an untrained drafter's drafts are almost never accepted, which leaves the accept path untested.
    A bigram table learned from the target's own output makes many drafts right and some wrong, on a real drafter.
    """
    follow: dict[int, Counter] = defaultdict(Counter)
    for seq in sequences:
        for prev, nxt in pairwise(seq):
            follow[prev][nxt] += 1
    ranked = sorted(follow.items(), key=lambda kv: -sum(kv[1].values()))[: drafter.config.markov_rank]
    with torch.no_grad():
        drafter.markov_in.weight.zero_()
        drafter.markov_out.weight.zero_()
        for slot, (prev, counts) in enumerate(ranked):
            drafter.markov_in.weight[prev, slot] = 1.0
            drafter.markov_out.weight[counts.most_common(1)[0][0], slot] = scale
    return drafter


def eval_prompts(name: str, limit: int) -> list[str]:
    rows = [json.loads(line) for line in (EVAL_DIR / f"{name}.jsonl").read_text().splitlines() if line.strip()]
    return [row["turns"][0] for row in rows[:limit]]


def primed_drafter(target, prompt: torch.Tensor, new_tokens: int = 60, **overrides) -> DSparkDrafter:
    """A drafter whose Markov head knows the target's greedy continuation of `prompt` (so drafts get accepted)."""
    overrides.setdefault("markov_rank", 32)
    drafter = DSparkDrafter.from_target(target, **overrides)
    reference = target.generate(prompt, max_new_tokens=new_tokens, do_sample=False)
    return prime_markov_head(drafter, [reference[0].tolist()])


def assert_same_greedy(target, drafter, prompt, gating=None, **kwargs) -> torch.Tensor:
    plain = target.generate(prompt, do_sample=False, **kwargs)
    spec = target.generate(prompt, assistant_model=drafter, do_sample=False, gating=gating, **kwargs)
    assert spec.tolist() == plain.tolist()
    return spec


def distillation_rows(target, n: int = 16, seed: int = 1) -> list[dict[str, list[int]]]:
    """Self-distillation data: prompts continued by the target itself, loss on the continuation."""
    prompts = torch.randint(0, 32, (n, 4), generator=torch.Generator().manual_seed(seed))
    ids = target.generate(prompts, max_new_tokens=28, do_sample=False)
    return [{"input_ids": row.tolist(), "loss_mask": [0] * 4 + [1] * (len(row) - 4)} for row in ids]


def make_trainer(out: Path, steps: int, rows, init_seed: int = 0, seed: int = 0, **overrides) -> DSparkTrainer:
    torch.manual_seed(init_seed)
    target = tiny_target(seed=7, sharp=4.0)
    drafter = DSparkDrafter.from_target(target, markov_rank=16, block_size=4)
    settings = dict(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, learning_rate=3e-3,
        lr_scheduler_type="linear", warmup_steps=2, logging_steps=1, save_steps=steps // 2, report_to=[],
        disable_tqdm=True, use_cpu=True, seed=seed, data_seed=seed, dataloader_num_workers=0,
    )  # fmt: skip
    args = TrainingArguments(**{**settings, **overrides})
    model = DSparkTrainingModel(drafter, target, num_anchors=8)
    return DSparkTrainer(model=model, args=args, train_dataset=rows, data_collator=collate_batch)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoModel, AutoModelForCausalLM
    target = AutoModelForCausalLM.from_pretrained(sys.argv[2]).eval()
    drafter = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
    prompt = torch.tensor([[1, 5, 9, 2]])
    plain = target.generate(prompt, max_new_tokens=20, do_sample=False)
    spec = target.generate(prompt, assistant_model=drafter, max_new_tokens=20, do_sample=False)
    rounds = drafter.stats.rounds
    torch.manual_seed(0)
    sampled = target.generate(prompt, assistant_model=drafter, max_new_tokens=20, do_sample=True, temperature=0.8)
    print(json.dumps({
        "class": type(drafter).__module__ + "." + type(drafter).__name__,
        "dspark_hf_imported": any(m == "dspark_hf" or m.startswith("dspark_hf.") for m in sys.modules),
        "identical": plain.tolist() == spec.tolist(),
        "rounds": rounds,
        "sampled_tokens": sampled.shape[1] - prompt.shape[1],
        "sampled_rounds": drafter.stats.rounds,
    }))
    """
)


def run_isolated(script: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run `script` in a fresh interpreter that never imports dspark_hf (it is not on its path as a module)."""
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", **(env or {})},
        cwd="/",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the non-stdlib, non-relative modules `path` imports anywhere in the file."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            roots.add(node.module.split(".")[0])
    return roots - set(sys.stdlib_module_names) - {"__future__"}
