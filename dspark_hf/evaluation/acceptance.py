"""Acceptance of a drafter on a prompt set: τ and per-position acceptance over many `generate()` calls, or, for
greedy decoding, replayed from the target's own continuations (`teacher_forced_acceptance`)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..decoding.round import DSparkStats, cut_at_eos, greedy_accept, lookup_continuation, room
from ..targets import encode_prompt, eos_ids, generate_continuations


def read_eval_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """First turns of a JSONL file whose rows are {"turns": [...]} (the shared GSM8K / HumanEval / MT-Bench sets)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--data: {path} not found")
    prompts = []
    expected = 'expected one JSON object per line, like {"turns": ["the prompt", ...]}'
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problem = f"not valid JSON ({err.msg} at column {err.colno})"
            raise ValueError(f"{path}, line {number}: {problem}; {expected}") from None
        turns = row.get("turns") if isinstance(row, dict) else None
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str) or not turns[0].strip():
            raise ValueError(f"{path}, line {number}: {expected}; got {line.strip()[:80]!r}")
        prompts.append(turns[0])
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
        merged.lookup_per_round += s.lookup_per_round
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
    return _report(per_prompt, new_tokens)


@lru_cache(maxsize=1)
def _acceptance_length():
    try:
        import evaluate
    except ImportError as err:
        raise ImportError("dspark eval computes τ with the `evaluate` library: pip install 'dspark-hf[eval]'") from err
    from . import ACCEPTANCE_LENGTH

    return evaluate.load(str(ACCEPTANCE_LENGTH))


def summarize_rounds(per_prompt: list[DSparkStats]) -> dict[str, Any]:
    """τ and per-position acceptance over every round of every prompt, computed by the `acceptance_length` module of
    the `evaluate` library (`dspark_hf/evaluation/acceptance_length`; loaded once per process)."""
    measure = _acceptance_length()
    for stats in per_prompt:
        measure.add_batch(accepted=stats.accepted_per_round, verified=stats.verified_per_round)
    return measure.compute(block_size=per_prompt[0].block_size)


def _report(per_prompt: list[DSparkStats], new_tokens: int) -> dict[str, Any]:
    summary = summarize_rounds(per_prompt)
    return {
        "tau": summary["tau"],
        "per_position_acceptance": summary["per_position_acceptance"],
        "rounds": summary["rounds"],
        "prompts": len(per_prompt),
        "new_tokens": new_tokens,
        "accepted_tokens": summary["accepted_tokens"],
        "verified_tokens": summary["verified_tokens"],
        "tau_per_prompt": [s.tau for s in per_prompt],
        "stats": per_prompt,  # the rounds themselves, for pooling over sets (not JSON: pop before dumping)
    }


@torch.no_grad()
def teacher_forced_acceptance(
    target,
    tokenizer,
    drafter,
    prompts: list[str],
    max_new_tokens: int = 256,
    batch_size: int = 16,
    prompt_lookup_tokens: int = 0,
) -> dict[str, Any]:
    """Greedy τ of `evaluate_acceptance` (fixed gating, L = γ; with `prompt_lookup_num_tokens=prompt_lookup_tokens`
    when that is > 0) without running the round loop: the target's greedy continuations come from one batched
    `generate()` per `batch_size` prompts (left-padded; `batch_size=1` gives exactly the continuations of unbatched
    decoding), then `replay_rounds` walks each one."""
    eos = eos_ids(target, tokenizer)
    per_prompt, new_tokens = [], 0
    bar = tqdm(total=len(prompts), desc="replaying rounds", unit="prompt")
    for start in range(0, len(prompts), batch_size):
        encoded = [
            encode_prompt(tokenizer, p, "cpu")["input_ids"][0].tolist() for p in prompts[start : start + batch_size]
        ]
        continuations = generate_continuations(
            target, tokenizer, encoded, max_new_tokens=max_new_tokens, do_sample=False
        )
        for prompt, continuation in zip(encoded, continuations, strict=True):
            new_tokens += len(continuation)
            sequence = torch.tensor(prompt + continuation)
            per_prompt.append(
                replay_rounds(target, drafter, sequence, len(prompt), max_new_tokens, eos, prompt_lookup_tokens)
            )
            bar.update(1)
    bar.close()
    return _report(per_prompt, new_tokens)


@torch.no_grad()
def replay_rounds(
    target,
    drafter,
    sequence: torch.Tensor,
    prompt_len: int,
    max_new_tokens: int,
    eos: set[int],
    prompt_lookup_tokens: int = 0,
    max_matching_ngram_size: int = 3,
) -> DSparkStats:
    """The rounds greedy `generate(..., assistant_model=drafter)` with fixed gating takes to produce `sequence`
    (1-D: prompt + the target's greedy continuation), without running them one by one.

    One target forward gives the context features at every position; one drafter pass drafts a block from every
    position at once, its Markov head fed the true previous tokens, which equal the drafted ones along any accepted
    prefix; then the rounds are walked as `generate()` takes them (length budget, EOS cut), a draft accepted while it
    equals the sequence's next token: greedy verification accepts exactly the tokens of greedy decoding."""
    from ..training.forward import block_outputs

    gamma = drafter.config.block_size
    sequence = sequence.to(target.device)[None]
    length = sequence.shape[1]
    anchors = torch.arange(prompt_len, length, device=sequence.device)[None]
    blocks = block_outputs(drafter, target, sequence, anchors, target_distributions=False)
    logits = blocks["draft_logits"][0]  # (anchors, γ, V)
    if drafter.config.draft_vocab is None:
        drafts = logits.argmax(-1).tolist()
    else:  # greedy drafting picks among the draft vocabulary only (lowest id on ties, as over the whole one)
        ids = torch.tensor(drafter.config.draft_vocab, device=logits.device)
        drafts = ids[logits[..., ids].argmax(-1)].tolist()
    tokens = sequence[0].tolist()
    stats = DSparkStats(block_size=max(gamma, prompt_lookup_tokens))
    anchor = prompt_len  # the first round drafts after the token the prefill produced
    while anchor < length - 1:  # generation ends at max_new_tokens or once EOS is in
        space = room(prompt_len + max_new_tokens, anchor + 1)
        drafted = drafts[anchor - prompt_len][: max(min(gamma, space), 0)]
        looked_up = []
        if prompt_lookup_tokens and drafted:
            found = lookup_continuation(tokens[: anchor + 1], max_matching_ngram_size, drafted[0])
            looked_up = cut_at_eos(found[: min(prompt_lookup_tokens, space)], eos)
        drafted = looked_up or cut_at_eos(drafted, eos)
        accepted = greedy_accept(tokens[anchor + 1 :], drafted)
        stats.record(len(drafted), len(drafted), accepted, bool(looked_up))
        anchor += accepted + 1
    return stats
