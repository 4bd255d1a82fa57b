"""The static loop (`static_loop.py`): the target on a static cache, verification replayed from CUDA graphs on a GPU.

On the CPU it runs uncaptured ($DSPARK_STATIC_LOOP=1); on a GPU the same tests replay the graphs. It must return what
plain `generate()` returns, round for round what Transformers' loop verifies, and leave to Transformers' loop every
request it does not reproduce. Sampling through it is checked against the exact distribution in
test_sampling_distribution.py (the `static-loop` cases)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import primed_drafter, tiny_target
from transformers import DynamicCache
from transformers.generation.streamers import BaseStreamer

from dspark_hf import PrefixScheduler
from dspark_hf.decoding.round import speculative_sampling
from dspark_hf.decoding.static_target import StaticTarget

pytestmark = pytest.mark.compat  # the loop uses StaticCache's write position, so 5.17 must run it too
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = {  # the scheduler on fixed costs: each loop's measured ones would differ (so would its rounds)
    "fixed": lambda: dict(gating="fixed"),
    "threshold": lambda: dict(gating="threshold"),
    "scheduler-lookup": lambda: dict(
        gating=PrefixScheduler([1.0, 1.3, 1.4, 1.5, 2.0, 2.1, 2.2, 2.3], 0.2, look_ahead=True, watch_rounds=False),
        prompt_lookup_num_tokens=6,
    ),
}


def setup(seed: int):
    target = tiny_target(seed=seed, sharp=4.0).to(DEVICE)
    prompt = torch.randint(1, 32, (1, 6), generator=torch.Generator().manual_seed(seed)).to(DEVICE)  # no pad (0)
    return target, prompt, primed_drafter(target, prompt)


def run(monkeypatch, loop: str, target, prompt, drafter, **kwargs) -> tuple[list[int], list[int], list[int], str]:
    monkeypatch.setenv("DSPARK_STATIC_LOOP", loop)
    out = target.generate(prompt, assistant_model=drafter, max_new_tokens=40, do_sample=False, **kwargs)
    stats = drafter.stats
    return out[0].tolist(), stats.accepted_per_round, stats.verified_per_round, stats.loop


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", range(3))
def test_greedy_is_plain_generate_round_for_round(monkeypatch, seed, case):
    target, prompt, drafter = setup(seed)
    plain = target.generate(prompt, max_new_tokens=40, do_sample=False)[0].tolist()
    transformers_loop = run(monkeypatch, "0", target, prompt, drafter, **CASES[case]())
    static_loop = run(monkeypatch, "1", target, prompt, drafter, **CASES[case]())
    assert transformers_loop[3] == "transformers" and static_loop[3] == "static"
    assert static_loop[0] == plain
    assert static_loop[1:3] == transformers_loop[1:3]  # the same drafts verified, the same accepted
    assert sum(static_loop[1]) > 10  # the drafter is primed: drafts do get accepted


def test_rounds_timed_phase_by_phase_add_up_and_change_nothing(monkeypatch):
    """`time_rounds=True` (the bench's profile pass): every round's context append, drafting, verification forward (by
    its number of tokens) and acceptance, each timed once a round; the output and the rounds are the untimed call's."""
    target, prompt, drafter = setup(2)
    untimed = run(monkeypatch, "1", target, prompt, drafter, gating="fixed")
    assert drafter.stats.round_phases == {}
    timed = run(monkeypatch, "1", target, prompt, drafter, gating="fixed", time_rounds=True)
    assert timed == untimed
    stats = drafter.stats
    phases = stats.round_phases
    verify = {int(name.split()[1]): times for name, (_, times) in phases.items() if name.startswith("verify ")}
    assert set(phases) - {f"verify {n}" for n in verify} == {"keep context", "draft", "accept"}
    assert all(phases[name][1] == stats.rounds for name in ("keep context", "draft", "accept"))
    assert sum(verify.values()) == stats.rounds and all(seconds > 0 for seconds, _ in phases.values())
    assert verify == {n + 1: stats.verified_per_round.count(n) for n in set(stats.verified_per_round)}


def test_stops_at_eos_and_max_length_like_generate(monkeypatch):
    target, prompt, drafter = setup(1)
    written = target.generate(prompt, max_new_tokens=40, do_sample=False)[0, 6:].tolist()
    eos = written[17]  # a token the target writes mid-way: the output ends at its first occurrence
    for kwargs in (dict(max_new_tokens=13), dict(max_new_tokens=40, eos_token_id=eos), dict(max_length=9)):
        plain = target.generate(prompt, do_sample=False, **kwargs)[0].tolist()
        monkeypatch.setenv("DSPARK_STATIC_LOOP", "1")
        spec = target.generate(prompt, assistant_model=drafter, do_sample=False, **kwargs)[0].tolist()
        assert spec == plain and drafter.stats.loop == "static", kwargs
        expected = 6 + written.index(eos) + 1 if "eos_token_id" in kwargs else kwargs.get("max_length", 6 + 13)
        assert len(spec) == expected, kwargs


class Collect(BaseStreamer):
    def __init__(self):
        self.tokens: list[int] = []

    def put(self, value):
        self.tokens += value.flatten().tolist()

    def end(self):
        pass


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(repetition_penalty=1.3),  # a logits processor the loop does not build
        dict(streamer=Collect()),  # a keyword generate() handles beyond the config
        dict(return_dict_in_generate=True, output_scores=True),
        dict(pad=True),  # a pad token in the prompt without a mask: generate() infers a mask
    ],
    ids=["processor", "streamer", "dict-output", "inferred-mask"],
)
def test_what_it_does_not_reproduce_goes_through_transformers_loop(monkeypatch, kwargs):
    target, prompt, drafter = setup(2)
    if kwargs.pop("pad", False):
        prompt = prompt.clone()
        prompt[0, 2] = target.generation_config.pad_token_id
    monkeypatch.setenv("DSPARK_STATIC_LOOP", "1")
    plain = target.generate(prompt, max_new_tokens=20, do_sample=False, **kwargs)
    spec = target.generate(prompt, assistant_model=drafter, max_new_tokens=20, do_sample=False, **kwargs)
    assert drafter.stats.loop == "transformers"
    if isinstance(plain, torch.Tensor):
        assert spec.tolist() == plain.tolist()
    else:
        assert spec.sequences.tolist() == plain.sequences.tolist()


def test_taken_by_default_only_on_cuda(monkeypatch):
    target, prompt, drafter = setup(0)
    monkeypatch.delenv("DSPARK_STATIC_LOOP", raising=False)
    target.generate(prompt, assistant_model=drafter, max_new_tokens=10, do_sample=False)
    assert drafter.stats.loop == ("static" if DEVICE == "cuda" else "transformers")
    monkeypatch.setenv("DSPARK_STATIC_LOOP", "0")
    target.generate(prompt, assistant_model=drafter, max_new_tokens=10, do_sample=False)
    assert drafter.stats.loop == "transformers"


@torch.no_grad()
def test_verification_forward_is_the_dynamic_cache_forward():
    """Logits and hidden states as Transformers' cache gives them, also after a rejected block left stale keys."""
    target = tiny_target(seed=3, sharp=4.0).to(DEVICE)
    ids = torch.randint(0, 32, (1, 30), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    static = StaticTarget(target, 64, capture=DEVICE == "cuda")
    calls = []
    hook = target.register_forward_hook(lambda *_: calls.append(1))
    static.forward(ids[:, :20], 0)
    static.forward(torch.randint(0, 32, (1, 6)).to(DEVICE), 20)  # drafts that all get rejected
    logits, hidden = static.forward(ids[:, 20:24], 20)
    hook.remove()
    assert len(calls) == 3  # replayed or not, every forward runs the target's hooks once
    cache = DynamicCache(config=target.config)
    target(ids[:, :20], use_cache=True, **{static.cache_kw: cache})
    ref = target(ids[:, 20:24], use_cache=True, output_hidden_states=True, **{static.cache_kw: cache})
    torch.testing.assert_close(logits, ref.logits[0], rtol=1e-4, atol=1e-4)
    for got, want in zip(hidden, ref.hidden_states, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_an_uncaptured_forward_attends_to_the_slots_up_to_its_last_token_only(monkeypatch):
    """Off a graph (the CPU, the prompt) attention covers start + tokens slots, not the whole capacity; the cache's
    tensors stay whole (later forwards and graphs use them) and the result is the whole-capacity forward's."""
    target = tiny_target(seed=3, sharp=4.0)
    ids = torch.randint(0, 32, (1, 30), generator=torch.Generator().manual_seed(3))
    static = StaticTarget(target, 64, capture=False)
    keys_seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, *args, **kwargs):
        keys_seen.append(key.shape[-2])
        return sdpa(query, key, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    static.forward(ids[:, :20], 0)  # the first forward allocates the cache: it sees the whole capacity
    logits, _ = static.forward(ids[:, 20:24], 20)
    layers = len(static.cache.layers)
    assert keys_seen == [64] * layers + [24] * layers
    assert all(layer.keys.shape[2] == layer.values.shape[2] == 64 for layer in static.cache.layers)
    static.start.fill_(20)
    whole, _ = static._forward(ids[:, 20:24])  # the same forward over all 64 slots
    torch.testing.assert_close(logits, whole, rtol=1e-5, atol=1e-5)


def test_speculative_sampling_draws_from_the_target():
    """The first token it returns follows p whatever q proposed (chi-square over 20 000 draws), and it keeps a draft
    exactly with probability min(1, p/q)."""
    torch.manual_seed(0)
    vocab, draws = 5, 20_000
    p_logits, q_logits = torch.randn(3, vocab) * 1.5, torch.randn(2, vocab) * 1.5
    p, q = p_logits[0].softmax(-1), q_logits[0].softmax(-1)
    counts, kept = torch.zeros(vocab), 0
    for _ in range(draws):
        drafts = torch.multinomial(q_logits.softmax(-1), 1)[:, 0]
        out = speculative_sampling(drafts, q_logits, p_logits)
        counts[out[0]] += 1
        kept += len(out) > 1
    stat = float(((counts - draws * p) ** 2 / (draws * p)).sum())
    df = vocab - 1
    assert stat < df * (1 - 2 / (9 * df) + 3.09 * math.sqrt(2 / (9 * df))) ** 3, (counts / draws, p)
    expected_kept = float(torch.minimum(p, q).sum())
    assert abs(kept / draws - expected_kept) < 4 * math.sqrt(expected_kept * (1 - expected_kept) / draws)


def test_a_draft_the_target_cannot_produce_is_never_kept_even_on_a_zero_draw(monkeypatch):
    """Keep draft i while u < p_i / q_i, strictly, as Transformers does: with u = 0 exactly, a draft with p = 0 must
    still be rejected (and one with p > 0 kept)."""
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: torch.zeros_like(real_rand(*args, **kwargs)))
    q_logits = torch.tensor([[0.0, 5.0, 0.0, 0.0]])  # the drafter proposed token 1
    impossible = torch.tensor([[1.0, -float("inf"), 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])  # the target never says 1
    for _ in range(20):
        out = speculative_sampling(torch.tensor([1]), q_logits, impossible)
        assert len(out) == 1 and int(out[0]) != 1, out
    possible = impossible.clone()
    possible[0, 1] = -20.0  # tiny but not zero: the zero draw keeps it
    assert speculative_sampling(torch.tensor([1]), q_logits, possible)[0] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the H200)")
@torch.no_grad()
def test_replayed_graphs_compute_what_the_forward_computes():
    target = tiny_target(seed=5, sharp=4.0).cuda()
    ids = torch.randint(0, 32, (1, 40), generator=torch.Generator().manual_seed(5)).cuda()
    eager, graphed = StaticTarget(target, 64, capture=False), StaticTarget(target, 64, capture=True)
    for static in (eager, graphed):
        static.forward(ids[:, :16], 0)
    start = 16
    for tokens in (1, 5, 3, 1, 8):
        want = eager.forward(ids[:, start : start + tokens], start)[0]
        got = graphed.forward(ids[:, start : start + tokens], start)[0]
        assert torch.equal(got, want), tokens
        start += max(1, tokens - 2)  # the next forward starts inside this one: rejected positions are rewritten
    assert set(graphed.graphs.graphs) == {1, 3, 5, 8}
