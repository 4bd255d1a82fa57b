"""Prompt lookup beside the drafter (`prompt_lookup_num_tokens` with a DSpark `assistant_model`): the lookup rule,
lossless greedy decoding on tiny targets, edge cases, and the teacher-forced replay of the same rounds (fast)."""

from __future__ import annotations

import pytest
import torch
from helpers import prime_markov_head, tiny_target

from dspark_hf import DSparkDrafter, FixedLength, PrefixScheduler
from dspark_hf.decoding.round import Drafting, lookup_continuation
from dspark_hf.evaluation import replay_rounds

pytestmark = pytest.mark.compat


def test_lookup_prefers_the_match_that_agrees_with_the_drafter():
    #      0  1  2  3  4  5  6  7  8  9
    ids = [5, 1, 2, 7, 9, 1, 2, 8, 3, 2]
    # the last token 2 occurred at 2 (then 7), at 6 (then 8); the drafter's first token picks among them
    assert lookup_continuation(ids, first_token=7) == [7, 9, 1, 2, 8, 3, 2]
    assert lookup_continuation(ids, first_token=8) == [8, 3, 2]
    # no agreeing match: a one-token match is not enough on its own
    assert lookup_continuation(ids, first_token=4) == []
    assert lookup_continuation(ids) == []


def test_lookup_takes_the_longest_then_the_latest_match():
    #      0  1  2  3  4  5  6  7  8  9 10 11
    ids = [1, 2, 3, 4, 6, 2, 3, 5, 7, 2, 3, 0]
    assert lookup_continuation(ids + [2, 3]) == [0, 2, 3]  # "2 3" ends at 2, 6 and 10 (never "0 2 3"): the latest
    assert lookup_continuation(ids + [1, 2, 3]) == [4, 6, 2, 3, 5, 7, 2, 3, 0, 1, 2, 3]  # the 3-gram "1 2 3" wins
    # guided: an agreeing two-token match wins over the three-token one that disagrees
    assert lookup_continuation(ids + [1, 2, 3], first_token=5) == [5, 7, 2, 3, 0, 1, 2, 3]
    # the n-gram is capped: with max_ngram=1 every "3" is a one-token match, too short unguided
    assert lookup_continuation(ids + [1, 2, 3], max_ngram=1) == []
    assert lookup_continuation(ids + [1, 2, 3], max_ngram=1, first_token=4) == [4, 6, 2, 3, 5, 7, 2, 3, 0, 1, 2, 3]
    assert lookup_continuation([3]) == [] and lookup_continuation([]) == []


def repeating_prompt(seed: int, length: int = 8) -> torch.Tensor:
    """A random phrase written twice: the target's continuation then often repeats what it already wrote."""
    phrase = torch.randint(0, 32, (1, length), generator=torch.Generator().manual_seed(seed))
    return torch.cat([phrase, phrase], dim=1)


def primed(target, prompt, new_tokens: int = 60, markov_rank: int = 32) -> DSparkDrafter:
    drafter = DSparkDrafter.from_target(target, markov_rank=markov_rank)
    reference = target.generate(prompt, max_new_tokens=new_tokens, do_sample=False)
    return prime_markov_head(drafter, [reference[0].tolist()])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("gating", ["fixed", "threshold"])
def test_greedy_identical_with_lookup_rounds(seed, gating):
    target = tiny_target(seed=seed, sharp=4.0)
    prompt = repeating_prompt(seed)
    drafter = primed(target, prompt)
    plain = target.generate(prompt, max_new_tokens=48, do_sample=False)
    spec = target.generate(
        prompt, assistant_model=drafter, max_new_tokens=48, do_sample=False, gating=gating, prompt_lookup_num_tokens=10
    )
    assert spec.tolist() == plain.tolist()
    stats = drafter.stats
    assert 0 < stats.lookup_rounds < stats.rounds, "both kinds of round must run, or this test exercises nothing"
    assert spec.shape[1] - prompt.shape[1] == 1 + stats.rounds + stats.accepted_tokens
    assert max(stats.verified_per_round) <= 10 and len(stats.per_position_acceptance) == 10
    assert all(0 <= a <= v for a, v in zip(stats.accepted_per_round, stats.verified_per_round, strict=True))


def test_lookup_runs_where_the_scheduler_skips_drafting():
    """An untrained drafter on a device where it does not pay: the scheduler stops drafting, lookup rounds go on."""
    target = tiny_target(seed=2, sharp=4.0)
    prompt = repeating_prompt(2)
    drafter = DSparkDrafter.from_target(target, markov_rank=0)
    plain = target.generate(prompt, max_new_tokens=48, do_sample=False)
    never_pays = PrefixScheduler(
        verify_s=[1.0] * 8, draft_s=10.0, watch_rounds=False
    )  # drafting costs ten forwards: never worth it
    spec = target.generate(
        prompt, assistant_model=drafter, max_new_tokens=48, do_sample=False, gating=never_pays,
        prompt_lookup_num_tokens=6, max_matching_ngram_size=2,
    )  # fmt: skip
    assert spec.tolist() == plain.tolist()
    assert drafter.stats.lookup_rounds > 0 and drafter.stats.accepted_tokens > 0


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 9, 10, 11, 12])
def test_lookup_respects_the_length_budget(max_new_tokens):
    target = tiny_target(seed=3, sharp=4.0)
    prompt = repeating_prompt(3, length=12)
    drafter = primed(target, prompt)
    plain = target.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False)
    spec = target.generate(
        prompt, assistant_model=drafter, max_new_tokens=max_new_tokens, do_sample=False, prompt_lookup_num_tokens=10
    )
    assert spec.tolist() == plain.tolist() and spec.shape[1] == prompt.shape[1] + max_new_tokens


def test_lookup_stops_at_eos():
    """Each token the target writes, made EOS in turn (most also sit in the prompt, so lookup drafts carry them)."""
    target = tiny_target(seed=2, sharp=4.0)
    prompt = repeating_prompt(2)
    drafter = primed(target, prompt)
    continuation = target.generate(prompt, max_new_tokens=40, do_sample=False)[0, prompt.shape[1] :].tolist()
    firsts = [i for i, t in enumerate(continuation) if i >= 1 and continuation.index(t) == i]
    assert len(firsts) >= 5 and sum(continuation[i] in prompt[0].tolist() for i in firsts) >= 3
    for first in firsts:
        kwargs = dict(max_new_tokens=40, do_sample=False, eos_token_id=continuation[first])
        spec = target.generate(prompt, assistant_model=drafter, prompt_lookup_num_tokens=10, **kwargs)
        assert spec.tolist() == target.generate(prompt, **kwargs).tolist()
        assert spec.shape[1] == prompt.shape[1] + first + 1


@pytest.mark.parametrize("seed", range(3))
def test_replay_takes_the_rounds_generate_takes(seed):
    target = tiny_target(seed=seed, sharp=4.0)
    prompt = repeating_prompt(seed)
    drafter = primed(target, prompt)
    out = target.generate(
        prompt, assistant_model=drafter, max_new_tokens=40, do_sample=False, gating="fixed", prompt_lookup_num_tokens=9
    )
    replayed = replay_rounds(target, drafter, out[0], prompt.shape[1], 40, eos=set(), prompt_lookup_tokens=9)
    assert replayed.lookup_rounds == drafter.stats.lookup_rounds > 0
    assert replayed.accepted_per_round == drafter.stats.accepted_per_round
    assert replayed.verified_per_round == drafter.stats.verified_per_round


def lookup_generator(target, drafter, policy, lookup_tokens: int = 8) -> Drafting:
    return Drafting(drafter.bind(target), policy, 200, set(), lookup_tokens=lookup_tokens, lookup_ngram=2)


def test_the_scheduler_sizes_lookup_continuations_from_their_measured_survival():
    target = tiny_target(seed=2, sharp=4.0)
    drafter = DSparkDrafter.from_target(target, markov_rank=0)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2]])  # "1 2" occurred before: 3 4 5 ... follows
    dear = PrefixScheduler(verify_s=[1.0 + 0.25 * t for t in range(9)], draft_s=0.0)  # each token costs 1/4 forward
    generator = lookup_generator(target, drafter, dear)
    assert generator._looked_up(ids, 50, first_token=None) == [3, 4, 5, 6, 7, 8, 9, 10]  # nothing seen yet
    # 20 lookup rounds: 2 accept nothing, 16 accept 1 draft, 2 accept 2: 20 of the 40 drafts reached survive
    for accepted in [0] * 2 + [1] * 16 + [2] * 2:
        generator._pending = (8, 8, True, 0.0)
        generator.record(accepted)
    assert (generator.lookup_accepted, generator.lookup_reached) == (1 + 20, 1 + 40)  # with the prior's 1 in 1
    # survival 21/41 per draft: a second draft (0.26) no longer pays a quarter of a forward
    assert generator._looked_up(ids, 50, first_token=None) == [3]
    # where tokens are free (the H200's launch-bound forwards) the same history verifies all of it
    flat = lookup_generator(target, drafter, PrefixScheduler(verify_s=[1.0] * 9, draft_s=0.0))
    flat.lookup_reached, flat.lookup_accepted = generator.lookup_reached, generator.lookup_accepted
    assert flat._looked_up(ids, 50, first_token=None) == [3, 4, 5, 6, 7, 8, 9, 10]
    # fixed and threshold policies verify what was found, as Transformers' own prompt lookup does
    fixed = lookup_generator(target, drafter, FixedLength())
    fixed.lookup_reached, fixed.lookup_accepted = generator.lookup_reached, generator.lookup_accepted
    assert fixed._looked_up(ids, 5, first_token=None) == [3, 4, 5, 6, 7]


@pytest.mark.parametrize("seed", range(3))
def test_greedy_identical_when_the_scheduler_cuts_lookup_continuations(seed):
    target = tiny_target(seed=seed, sharp=4.0)
    prompt = repeating_prompt(seed)
    drafter = primed(target, prompt)
    plain = target.generate(prompt, max_new_tokens=48, do_sample=False)
    costs = {  # a second new token costs 0.1 forward, each one after it a whole forward: never worth more than one
        "dear": [1.0, 1.1] + [1.1 + t for t in range(1, 10)],
        "flat": [1.0] * 11,
    }
    verified = {}
    for name, verify_s in costs.items():
        spec = target.generate(
            prompt, assistant_model=drafter, max_new_tokens=48, do_sample=False,
            gating=PrefixScheduler(verify_s=verify_s, draft_s=0.0, watch_rounds=False), prompt_lookup_num_tokens=10,
        )  # fmt: skip
        assert spec.tolist() == plain.tolist()
        rounds = zip(drafter.stats.verified_per_round, drafter.stats.lookup_per_round, strict=True)
        verified[name] = {v for v, looked in rounds if looked}
    assert verified["dear"] == {1} and max(verified["flat"]) > 1
