"""Sampling through DSpark rounds follows the target's distribution (speculative sampling is lossless).

Tiny target, vocabulary 6: the exact distribution of the first three generated tokens is enumerated (216 outcomes)
and compared with the empirical one from `generate(..., assistant_model=drafter, do_sample=True)` by a chi-square
goodness-of-fit test at significance 1e-3 (cells with expected count < 5 pooled). With max_new_tokens=5 the first
round drafts and verifies three tokens, so tokens 2 and 3 come out of the accept / reject / resample logic. The same
statistic must reject a nearby wrong distribution (the target at temperature x1.3), which shows the test has power.
Cases marked `static-loop` run through the static loop (`static_loop.py`, the default on CUDA) instead of
Transformers' loop.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from helpers import tiny_target
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper

from dspark_hf import DSparkDrafter, PrefixScheduler

VOCAB, PROMPT, SAMPLES, ALPHA_Z = 6, [1, 4, 2], 2000, 3.0902  # z for one-sided alpha = 1e-3


def exact_joint(target, processors: LogitsProcessorList) -> dict[tuple[int, int, int], float]:
    """P(x1, x2, x3 | prompt) under the target with `processors` applied at each step."""
    outcomes = list(itertools.product(range(VOCAB), repeat=3))
    ids = torch.tensor([PROMPT + list(o) for o in outcomes])
    with torch.no_grad():
        logits = target(ids).logits.float()
    n = len(PROMPT)
    joint = {}
    for row, outcome in enumerate(outcomes):
        prob = 1.0
        for step in range(3):
            scores = processors(ids[row : row + 1, : n + step], logits[row : row + 1, n - 1 + step])
            prob *= torch.softmax(scores, dim=-1)[0, outcome[step]].item()
        joint[outcome] = prob
    return joint


def chi_square(counts: dict, expected_probs: dict, total: int) -> tuple[float, float]:
    """Statistic and critical value (Wilson-Hilferty) at alpha=1e-3, pooling cells expected below 5."""
    stat, pooled_obs, pooled_exp, cells = 0.0, 0, 0.0, 0
    for outcome, p in expected_probs.items():
        expected, observed = p * total, counts.get(outcome, 0)
        if expected < 5:
            pooled_obs, pooled_exp = pooled_obs + observed, pooled_exp + expected
            continue
        stat += (observed - expected) ** 2 / expected
        cells += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        cells += 1
    df = cells - 1
    critical = df * (1 - 2 / (9 * df) + ALPHA_Z * math.sqrt(2 / (9 * df))) ** 3
    return stat, critical


@pytest.mark.parametrize(
    ("markov_rank", "warp"),
    [
        (0, {}),
        pytest.param(4, {}, marks=pytest.mark.compat),  # Transformers' rejection sampling on 5.17 too; one case
        (4, {"temperature": 0.8, "top_k": 4, "static_loop": True}),  # Transformers' warpers built by our loop
        (4, {"draft_vocab": [0, 2, 3, 5]}),
    ],
    ids=["markov-off", "markov-on", "markov-on-temperature-topk-static-loop", "draft-vocabulary"],
)
def test_speculative_sampling_matches_target_distribution(monkeypatch, markov_rank, warp):
    monkeypatch.setenv("DSPARK_STATIC_LOOP", "1" if warp.get("static_loop") else "0")
    check_sampling(markov_rank, warp, layers=2)  # the rejection sampling alone: a 2-layer target runs 2 000 calls fast


@pytest.mark.parametrize(
    "warp",
    [
        # the scheduler with costs under which the best L often hangs on later confidences (so on sampled tokens):
        # it must decide L one position at a time, from what precedes each position only
        # (the bias of a scheduler that looked ahead showed as chi-square 189 against a critical 120 here)
        {"gating": PrefixScheduler([1.0, 1.3, 1.4, 1.5], 0.0, watch_rounds=False), "seed": 7, "confidence_std": 1.0},
        # lookup rounds under a scheduler whose costs make it cut a continuation once a lookup draft failed
        {"gating": PrefixScheduler([1.0, 1.6, 2.2, 2.8], 0.0, watch_rounds=False), "prompt_lookup_num_tokens": 3},
        {
            "gating": PrefixScheduler([1.0, 1.6, 2.2, 2.8], 0.0, watch_rounds=False),
            "prompt_lookup_num_tokens": 3,
            "static_loop": True,
        },
    ],
    ids=["scheduler", "scheduler-cuts-lookup", "scheduler-cuts-lookup-static-loop"],
)
def test_sampling_with_lookup_rounds_and_the_scheduler_matches_target_distribution(monkeypatch, warp):
    monkeypatch.setenv("DSPARK_STATIC_LOOP", "1" if warp.get("static_loop") else "0")
    # on 2 layers a scheduler that looks ahead no longer shows its bias; lookup rounds run as well on 2
    check_sampling(4, warp, layers=2 if "prompt_lookup_num_tokens" in warp else 6)


def check_sampling(markov_rank: int, warp: dict, layers: int) -> None:
    target = tiny_target(vocab_size=VOCAB, seed=21, sharp=15.0, num_hidden_layers=layers)
    drafter = DSparkDrafter.from_target(target, block_size=3, markov_rank=markov_rank)
    torch.manual_seed(warp.get("seed", 5))
    with torch.no_grad():  # a drafter that disagrees with the target, so rejections and resampling happen
        for p in drafter.parameters():
            p.normal_(0, 0.3)
        if drafter.markov_out is not None:
            drafter.markov_out.weight.normal_(0, 1.0)
        if "confidence_std" in warp:  # confidences that vary with the drafted tokens
            drafter.markov_in.weight.normal_(0, 3.0)
            drafter.confidence_head.weight.normal_(0, warp["confidence_std"])
    drafter.set_draft_vocab(warp.get("draft_vocab"))  # tokens 1 and 4 then come only from the target's resampling

    temperature, top_k = warp.get("temperature", 1.0), warp.get("top_k", 0)
    processors = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        processors.append(TopKLogitsWarper(top_k))
    expected = exact_joint(target, processors)

    torch.manual_seed(1234)
    prompt = torch.tensor([PROMPT])
    counts: dict[tuple[int, ...], int] = {}
    accepted = rejected = looked_up = 0
    first_lengths = []
    lookup = {key: warp[key] for key in ("prompt_lookup_num_tokens",) if key in warp}
    for _ in range(SAMPLES):
        out = target.generate(
            prompt,
            assistant_model=drafter,
            do_sample=True,
            max_new_tokens=5,
            temperature=temperature,
            top_k=top_k or None,
            top_p=None,
            gating=warp.get("gating", "fixed"),
            **lookup,
        )
        key = tuple(out[0, len(PROMPT) : len(PROMPT) + 3].tolist())
        counts[key] = counts.get(key, 0) + 1
        first_round = drafter.stats.accepted_per_round[0]
        accepted += first_round
        rejected += first_round < drafter.stats.verified_per_round[0]
        first_lengths.append(drafter.stats.verified_per_round[0])
        looked_up += drafter.stats.lookup_rounds

    assert drafter.stats.loop == ("static" if warp.get("static_loop") else "transformers")
    if lookup:  # rounds that verify looked-up tokens (no q: exact matching against the target's sample) must run
        assert looked_up > SAMPLES * 0.08, looked_up

    # the scheduler verified every length from 0 to 3 in the first round, often shorter ones (with lookup and dear
    # costs no draft is verified in a first round: the lookup rounds above carry that case)
    if "gating" in warp and not lookup:
        assert set(first_lengths) == {0, 1, 2, 3} and accepted > SAMPLES * 0.05 and rejected > SAMPLES * 0.3
    elif "gating" not in warp:
        assert accepted > SAMPLES * 0.3 and rejected > SAMPLES * 0.3, "both accept and reject paths must be exercised"
    stat, critical = chi_square(counts, expected, SAMPLES)
    assert stat < critical, f"chi-square {stat:.1f} >= critical {critical:.1f}: not the target's distribution"

    wrong = exact_joint(target, LogitsProcessorList([TemperatureLogitsWarper(temperature * 1.3), *processors[1:]]))
    wrong_stat, wrong_critical = chi_square(counts, wrong, SAMPLES)
    assert wrong_stat > wrong_critical, "the test cannot tell a slightly different distribution apart"
