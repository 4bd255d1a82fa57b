"""Acceptance of a drafter on a prompt set: τ and per-position acceptance over many `generate()` calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .generation import DSparkStats
from .targets import encode_prompt


def read_eval_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """First turns of a JSONL file whose rows are {"turns": [...]} (the shared GSM8K / HumanEval / MT-Bench sets)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--data: {path} not found")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        turns = json.loads(line).get("turns")
        if not turns or not str(turns[0]).strip():
            raise ValueError(f'{path}:{number}: expected a row like {{"turns": ["prompt", ...]}}')
        prompts.append(str(turns[0]))
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


def merge_stats(stats: list[DSparkStats]) -> DSparkStats:
    """One DSparkStats over many calls: counts add up, per-round records concatenate."""
    merged = DSparkStats(block_size=stats[0].block_size)
    for s in stats:
        merged.rounds += s.rounds
        merged.drafted_tokens += s.drafted_tokens
        merged.verified_tokens += s.verified_tokens
        merged.accepted_tokens += s.accepted_tokens
        merged.accepted_per_round += s.accepted_per_round
        merged.verified_per_round += s.verified_per_round
        merged.draft_time_s += s.draft_time_s
        merged.total_time_s += s.total_time_s
    return merged


@torch.no_grad()
def evaluate_acceptance(
    target,
    tokenizer,
    drafter,
    prompts: list[str],
    max_new_tokens: int = 256,
    generate_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Generate every prompt with the drafter and return τ, per-position acceptance and the round counts."""
    per_prompt = []
    new_tokens = 0
    for i, prompt in enumerate(tqdm(prompts, desc="evaluating", unit="prompt")):
        torch.manual_seed(seed + i)
        inputs = encode_prompt(tokenizer, prompt, target.device)
        out = target.generate(
            **inputs, assistant_model=drafter, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
            **(generate_kwargs or {}),
        )  # fmt: skip
        new_tokens += out.shape[1] - inputs["input_ids"].shape[1]
        per_prompt.append(drafter.stats)
    merged = merge_stats(per_prompt)
    return {
        "tau": merged.tau,
        "per_position_acceptance": merged.per_position_acceptance,
        "rounds": merged.rounds,
        "prompts": len(prompts),
        "new_tokens": new_tokens,
        "accepted_tokens": merged.accepted_tokens,
        "verified_tokens": merged.verified_tokens,
        "tau_per_prompt": [s.tau for s in per_prompt],
    }
