"""Lossless greedy decoding, edge cases, stats and clear errors, on tiny random targets (fast)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same_greedy, primed_drafter, tiny_target
from transformers.generation.streamers import BaseStreamer

from dspark_hf import ConfidenceThreshold, DSparkDrafter, FixedLength, notices

pytestmark = pytest.mark.compat


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("gating", ["fixed", "threshold"])
def test_greedy_identical_with_accepting_drafter(seed, gating):
    target = tiny_target(seed=seed, sharp=4.0)
    prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(seed))
    drafter = primed_drafter(target, prompt)
    spec = assert_same_greedy(target, drafter, prompt, max_new_tokens=40, gating=gating)
    stats = drafter.stats
    new_tokens = spec.shape[1] - prompt.shape[1]
    # one token from the prefill, then each round yields its accepted drafts plus the bonus token
    assert new_tokens == 1 + stats.rounds + stats.accepted_tokens
    assert stats.tau > 1.5, "the primed drafter should be accepted often; otherwise this test exercises nothing"
    assert stats.verified_tokens <= stats.drafted_tokens <= stats.rounds * drafter.config.block_size
    assert len(stats.accepted_per_round) == stats.rounds
    assert all(0 <= a <= v for a, v in zip(stats.accepted_per_round, stats.verified_per_round, strict=True))


@pytest.mark.parametrize("markov_rank", [0, 16])
@pytest.mark.parametrize("block_size", [1, 4, 7, 12])
def test_greedy_identical_untrained(markov_rank, block_size):
    target = tiny_target(seed=block_size, vocab_size=16, sharp=3.0)
    drafter = DSparkDrafter.from_target(target, markov_rank=markov_rank, block_size=block_size)
    if markov_rank == 0:
        assert drafter.markov_in is None and drafter.markov_out is None
    prompt = torch.randint(0, 16, (1, 5), generator=torch.Generator().manual_seed(block_size))
    assert_same_greedy(target, drafter, prompt, max_new_tokens=30, gating="fixed")


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 6, 7, 8])
def test_max_new_tokens_below_and_around_block(max_new_tokens):
    target = tiny_target(seed=3, sharp=4.0)
    prompt = torch.randint(0, 32, (1, 4), generator=torch.Generator().manual_seed(3))
    drafter = primed_drafter(target, prompt)
    spec = assert_same_greedy(target, drafter, prompt, max_new_tokens=max_new_tokens, gating="fixed")
    assert spec.shape[1] == prompt.shape[1] + max_new_tokens


@pytest.mark.parametrize("min_index", [2, 9, 17])
def test_eos_inside_a_block(min_index):
    target = tiny_target(seed=11, sharp=4.0)
    prompt = torch.randint(0, 32, (1, 5), generator=torch.Generator().manual_seed(11))
    drafter = primed_drafter(target, prompt, new_tokens=40)
    continuation = target.generate(prompt, max_new_tokens=40, do_sample=False)[0, prompt.shape[1] :].tolist()
    # a token whose first appearance is at or after min_index becomes EOS: generation must stop right there
    first = next(i for i, t in enumerate(continuation) if i >= min_index and continuation.index(t) == i)
    eos = continuation[first]
    spec = assert_same_greedy(target, drafter, prompt, max_new_tokens=40, eos_token_id=eos, gating="fixed")
    assert spec.shape[1] == prompt.shape[1] + first + 1 and spec[0, -1].item() == eos
    assert drafter.stats.accepted_tokens > 0


@pytest.mark.parametrize("max_new_tokens", [1, 2, 30])
@pytest.mark.parametrize("lookup", [0, 8])
def test_prompt_ending_in_eos(max_new_tokens, lookup):
    """A prompt that already ends in EOS: the target writes on (Transformers 5.17 added no token without a guess)."""
    target = tiny_target(seed=4, sharp=4.0)
    prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(4))
    drafter = primed_drafter(target, prompt)
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=int(prompt[0, -1]))
    plain = target.generate(prompt, do_sample=False, **kwargs)  # (not Transformers' own lookup: 5.17 stops there)
    kwargs.update(assistant_model=drafter, prompt_lookup_num_tokens=lookup)
    spec = target.generate(prompt, do_sample=False, **kwargs)
    assert spec.tolist() == plain.tolist() and spec.shape[1] > prompt.shape[1]
    torch.manual_seed(0)
    sampled = target.generate(prompt, do_sample=True, **kwargs)
    assert sampled.shape[1] > prompt.shape[1]


@pytest.mark.parametrize("seed", range(4))
def test_greedy_identical_with_a_draft_vocabulary(seed):
    """Drafts come from the draft vocabulary only; the output is the target's, whether or not its tokens are in it."""
    target = tiny_target(seed=seed, sharp=4.0)
    prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(seed))
    drafter = primed_drafter(target, prompt)
    continuation = target.generate(prompt, max_new_tokens=40, do_sample=False)[0, prompt.shape[1] :].tolist()
    used = sorted(set(continuation))
    unused = [t for t in range(32) if t not in used]
    assert_same_greedy(target, drafter, prompt, max_new_tokens=40, gating="fixed")
    whole = drafter.stats
    drafter.set_draft_vocab(used[::2] + unused[:3])  # half the tokens the target writes, and a few it never does
    assert_same_greedy(target, drafter, prompt, max_new_tokens=40, gating="fixed")
    assert 0 < drafter.stats.accepted_tokens < whole.accepted_tokens
    drafter.set_draft_vocab(unused)  # none of the tokens the target writes: every draft is rejected
    assert_same_greedy(target, drafter, prompt, max_new_tokens=40, gating="fixed")
    assert drafter.stats.accepted_tokens == 0 and drafter.stats.verified_tokens > 0


def test_draft_vocabulary_steps_aside_for_processors_that_index_the_whole_vocabulary():
    target = tiny_target(seed=8, sharp=4.0)
    prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(8))
    drafter = primed_drafter(target, prompt)
    written = set(target.generate(prompt, max_new_tokens=30, do_sample=False, repetition_penalty=1.3)[0].tolist())
    drafter.set_draft_vocab([t for t in range(32) if t not in written])  # would reject every draft if it were used
    assert_same_greedy(target, drafter, prompt, max_new_tokens=30, repetition_penalty=1.3, gating="fixed")
    assert drafter.stats.accepted_tokens > 0  # drafted from the whole vocabulary


def test_one_token_prompt_and_long_prompt():
    target = tiny_target(seed=5, sharp=4.0)
    for length in (1, 700):
        prompt = torch.randint(0, 32, (1, length), generator=torch.Generator().manual_seed(length))
        drafter = primed_drafter(target, prompt)
        assert_same_greedy(target, drafter, prompt, max_new_tokens=24)


def test_logits_processors_and_streamer():
    target = tiny_target(seed=8, sharp=4.0)
    prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(8))
    drafter = primed_drafter(target, prompt)

    class Collect(BaseStreamer):
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, value):
            self.chunks.append(value.flatten().tolist())

        def end(self):
            self.ended = True

    streamer = Collect()
    kwargs = dict(max_new_tokens=30, repetition_penalty=1.3, no_repeat_ngram_size=3, min_new_tokens=5)
    plain = target.generate(prompt, do_sample=False, **kwargs)
    spec = target.generate(prompt, assistant_model=drafter, do_sample=False, streamer=streamer, **kwargs)
    assert spec.tolist() == plain.tolist()
    streamed = [t for chunk in streamer.chunks for t in chunk]
    assert streamed == spec[0].tolist() and streamer.ended  # prompt first, then every accepted token once


def test_gating_policies_choose_prefix_lengths():
    assert FixedLength()([0.9, 0.5, 0.1]) == 3
    assert FixedLength(2)([0.9, 0.5, 0.1]) == 2
    assert ConfidenceThreshold(0.4)([0.9, 0.5, 0.3, 0.2]) == 2
    assert ConfidenceThreshold(0.95)([0.9, 0.5]) == 1  # at least one draft: verifying it is nearly free
    assert ConfidenceThreshold(0.95, min_length=0)([0.9]) == 0


def test_threshold_gating_verifies_fewer_tokens_than_fixed():
    target = tiny_target(seed=2, sharp=4.0)
    prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(2))
    drafter = primed_drafter(target, prompt)
    assert_same_greedy(target, drafter, prompt, max_new_tokens=30, gating="fixed")
    fixed = drafter.stats
    assert_same_greedy(target, drafter, prompt, max_new_tokens=30, gating=ConfidenceThreshold(0.3))
    gated = drafter.stats
    assert gated is not fixed
    assert gated.verified_tokens / gated.rounds < fixed.verified_tokens / fixed.rounds
    assert max(gated.verified_per_round) < max(fixed.verified_per_round)  # never the whole block: a_k falls with k


def test_per_position_acceptance_matches_rounds():
    target = tiny_target(seed=4, sharp=4.0)
    prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(4))
    drafter = primed_drafter(target, prompt)
    assert_same_greedy(target, drafter, prompt, max_new_tokens=40, gating="fixed")
    stats = drafter.stats
    rates = stats.per_position_acceptance
    assert len(rates) == drafter.config.block_size
    verified_first = sum(1 for v in stats.verified_per_round if v > 0)
    assert rates[0] == pytest.approx(sum(1 for a in stats.accepted_per_round if a > 0) / verified_first)
    assert stats.as_dict()["tau"] == pytest.approx(stats.tau)
    assert stats.draft_time_s > 0 and stats.total_time_s >= stats.draft_time_s


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_beams=2), "beam search"),
        (dict(num_return_sequences=2, do_sample=True), "num_return_sequences"),
        (dict(cache_implementation="static"), "dynamic"),
        (dict(penalty_alpha=0.6, top_k=4), "Contrastive"),
    ],
)
def test_unsupported_modes_fail_early(tiny, kwargs, message):
    drafter = DSparkDrafter.from_target(tiny)
    with pytest.raises(ValueError, match=message):
        tiny.generate(torch.tensor([[1, 2, 3]]), assistant_model=drafter, max_new_tokens=5, **kwargs)


def test_an_empty_prompt_is_refused_in_words(tiny):
    drafter = DSparkDrafter.from_target(tiny)
    with pytest.raises(ValueError, match="a prompt of at least one token"):
        tiny.generate(torch.zeros(1, 0, dtype=torch.long), assistant_model=drafter, max_new_tokens=5)


def test_the_drafter_follows_its_target_when_the_target_is_cast_after_binding(monkeypatch, capsys):
    monkeypatch.setattr(notices, "_WARNED", set())
    target = tiny_target(seed=7, sharp=4.0)
    prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(7))
    drafter = primed_drafter(target, prompt)
    assert_same_greedy(target, drafter, prompt, max_new_tokens=20)
    target.to(torch.bfloat16)  # after the drafter was bound to it in float32
    out = target.generate(prompt, assistant_model=drafter, max_new_tokens=20, do_sample=False, gating="fixed")
    assert drafter.dtype == torch.bfloat16 and out.shape[1] == prompt.shape[1] + 20
    target.generate(prompt, assistant_model=drafter, max_new_tokens=5, do_sample=False, gating="fixed")
    said = [line for line in capsys.readouterr().err.splitlines() if "the target runs in bfloat16" in line]
    assert len(said) == 1 and "float32 is the token-identity guarantee" in said[0], said  # once, on the first call
    target.to(torch.float32)  # and back: identical to plain again
    assert_same_greedy(target, drafter, prompt, max_new_tokens=20)
    assert drafter.dtype == torch.float32


def test_batch_and_padding_fail_early(tiny):
    drafter = DSparkDrafter.from_target(tiny)
    with pytest.raises(ValueError, match="batch size 1"):
        tiny.generate(torch.tensor([[1, 2, 3], [4, 5, 6]]), assistant_model=drafter, max_new_tokens=5)
    with pytest.raises(ValueError, match="padded"):
        tiny.generate(
            input_ids=torch.tensor([[0, 2, 3]]),
            attention_mask=torch.tensor([[0, 1, 1]]),
            assistant_model=drafter,
            max_new_tokens=5,
        )


def test_other_assistants_are_untouched(tiny):
    """The routing only claims DSpark drafters: a plain assistant model still runs Transformers' own path."""
    prompt = torch.tensor([[1, 2, 3, 4]])
    plain = tiny.generate(prompt, max_new_tokens=10, do_sample=False)
    assisted = tiny.generate(prompt, assistant_model=tiny_target(seed=9), max_new_tokens=10, do_sample=False)
    assert assisted.tolist() == plain.tolist()
