"""Shared fixtures: tiny random targets for fast tests, the real SmolLM2 target for end-to-end ones."""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run under the interpreter on CPU; must be set before importing it
    os.environ.setdefault("TRITON_INTERPRET", "1")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import dspark_hf  # noqa: E402
from dspark_hf import DSparkDrafter  # noqa: E402

# ../shared/data/eval beside the checkout; DSPARK_EVAL_DIR overrides it (the GPU machine gets a carried copy)
EVAL_DIR = Path(os.environ.get("DSPARK_EVAL_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"))


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


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct target (Hub cache, else the GGUF fallback) on CPU, float32."""
    return dspark_hf.load_target(device="cpu")


@pytest.fixture()
def tiny():
    return tiny_target()
