"""The hardware-aware prefix scheduler: cost profiles (measured, cached), the per-request choice of L, the batched
Algorithm 1 and its early stop, and the scheduler as generate()'s default gating (lossless on tiny targets)."""

from __future__ import annotations

import itertools
import json
import random
import time

import pytest
import torch
from helpers import assert_same_greedy, primed_drafter, tiny_target

from dspark_hf import (
    ConfidenceThreshold,
    CostProfile,
    DSparkConfig,
    DSparkDrafter,
    FixedLength,
    PrefixScheduler,
    load_profile,
    make_gating,
    notices,
    schedule_batch,
)
from dspark_hf.decoding import round as round_module
from dspark_hf.decoding import routing
from dspark_hf.decoding.policies import convex_envelope, isotonic
from dspark_hf.decoding.profile import _median_seconds, draft_key, drafter_signature, profile_path
from dspark_hf.decoding.round import FORECAST_PRIOR, Drafting

pytestmark = pytest.mark.compat


def random_prefix_probs(rng: random.Random, length: int) -> list[float]:
    """a_k = Π c_i for random confidences: in [0, 1] and never increasing, as the drafter's are."""
    probs, a = [], 1.0
    for _ in range(length):
        a *= rng.random() ** 0.5
        probs.append(a)
    return probs


def random_costs(rng: random.Random, length: int, convex: bool = True) -> list[float]:
    """Nondecreasing costs; with `convex`, each extra token costs no less than the one before."""
    steps = [rng.uniform(0.0, 3.0) for _ in range(length - 1)]
    if convex:
        steps.sort()
    return list(itertools.accumulate([rng.uniform(5.0, 30.0), *steps]))


def rate(lengths, prefix_probs, verify_cost, draft_cost) -> float:
    gain = sum(1 + sum(p[:n]) for n, p in zip(lengths, prefix_probs, strict=True))
    return gain / (draft_cost + verify_cost(len(lengths) + sum(lengths)))


# ----- measured costs ------------------------------------------------------------------------------------------------


def test_isotonic_is_the_closest_nondecreasing_fit():
    assert isotonic([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]
    assert isotonic([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]  # one outlier is pooled, not propagated
    rng = random.Random(0)
    for _ in range(50):
        values = [rng.uniform(0, 10) for _ in range(rng.randint(1, 12))]
        fitted = isotonic(values)
        assert all(a <= b + 1e-12 for a, b in itertools.pairwise(fitted))
        assert sum(fitted) == pytest.approx(sum(values))  # pooling keeps the mean


def test_costs_are_timed_interleaved_after_a_warm_up_pass():
    """Each pass times every shape once, so a slow spell on a shared machine (here: the third pass) hits all shapes
    alike and the medians ignore it, where timing one shape's repeats back to back would pin it on one shape."""
    calls = []

    def shape(index: int, seconds: float):
        def run():
            calls.append(index)
            slow_spell = 0.1 if len(calls) in range(7, 10) else 0.0
            time.sleep(seconds + slow_spell)

        return run

    medians = _median_seconds([shape(0, 0.0), shape(1, 0.01), shape(2, 0.02)], torch.device("cpu"), repeats=5)
    assert calls == [0, 1, 2] * 6  # a warm-up pass, then 5 timed passes
    assert medians[0] < 0.01 <= medians[1] < 0.02 <= medians[2] < 0.05, medians


def test_cost_profile_interpolates_round_trips_and_refuses_what_it_lacks():
    profile = CostProfile("cpu", "t", "float32", 256, 2, verify_s={1: [0.01, 0.02, 0.04], 4: [0.02, 0.03, 0.05]})
    assert profile.verify_time(1) == 0.01 and profile.verify_time(3) == 0.04
    assert profile.verify_time(2.5) == pytest.approx(0.03)
    assert profile.verify_time(0.5) == 0.01  # at least one token is always verified
    assert profile.verify_time(10 / 4, batch=4) == pytest.approx(0.04)
    with pytest.raises(ValueError, match="dspark profile --batch-sizes 2"):
        profile.verify_time(1, batch=2)
    with pytest.raises(ValueError, match="beyond"):
        profile.verify_time(4)
    assert CostProfile.from_json(profile.to_json()) == profile
    with pytest.raises(ValueError, match="format"):
        CostProfile.from_json(json.dumps({**json.loads(profile.to_json()), "format": 99}))


def test_profile_is_measured_once_cached_and_extended(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPARK_HF_CACHE", str(tmp_path))
    target = tiny_target(seed=1)
    drafter = DSparkDrafter.from_target(target, markov_rank=8, block_size=5)
    profile = load_profile(target, drafter, progress=False)
    path = profile_path(target)
    assert path.parent == tmp_path / "profiles" and path.is_file()
    row = profile.verify_s[1]
    assert len(row) == 6 and all(s > 0 for s in row) and row == sorted(row)  # 1..block+1 tokens, nondecreasing
    assert profile.draft_s[drafter_signature(drafter)] > 0
    assert profile.device.startswith("CPU") and profile.dtype == "float32"

    stamp = path.stat().st_mtime_ns
    assert load_profile(target, drafter, progress=False) == profile and path.stat().st_mtime_ns == stamp  # cached

    wider = load_profile(target, drafter, batch_sizes=(1, 3), progress=False)  # only what is missing is measured
    assert wider.verify_s[1] == row and len(wider.verify_s[3]) == 6
    other = DSparkDrafter.from_target(target, markov_rank=0, block_size=5)
    both = load_profile(target, other, progress=False)
    assert set(both.draft_s) == {drafter_signature(drafter), drafter_signature(other)}
    assert CostProfile.from_json(path.read_text()) == both

    path.write_text("{not json")
    assert load_profile(target, drafter, progress=False).verify_s[1]  # unreadable: measured again, not a crash
    assert profile_path(tiny_target(seed=1, hidden_size=64, intermediate_size=96)) != path  # another model, own file


def test_sampled_calls_plan_with_a_sampled_drafting_round(tmp_path, monkeypatch):
    """A sampled round also draws its drafts and accepts them by rejection sampling: its cost has an entry of its own,
    measured when a sampled call first needs it and cached; sampled calls plan with it, greedy ones with theirs."""
    monkeypatch.setenv("DSPARK_HF_CACHE", str(tmp_path))
    monkeypatch.setenv("DSPARK_STATIC_LOOP", "0")
    target = tiny_target(seed=1)
    drafter = DSparkDrafter.from_target(target, markov_rank=8, block_size=5)
    assert set(load_profile(target, drafter, progress=False).draft_s) == {draft_key(drafter, False)}
    planned = []

    def spy(*args, **kwargs):
        policy = make_gating(*args, **kwargs)
        planned.append(policy.draft_s)
        return policy

    monkeypatch.setattr(routing, "make_gating", spy)
    prompt = torch.tensor([[1, 5, 9, 2]])
    sampled = []
    for _ in range(2):  # the first call measures the sampled round, and still draws what a seeded call draws
        torch.manual_seed(3)
        sampled.append(target.generate(prompt, assistant_model=drafter, max_new_tokens=24, do_sample=True).tolist())
    target.generate(prompt, assistant_model=drafter, max_new_tokens=8, do_sample=False)
    assert sampled[0] == sampled[1]
    profile = CostProfile.from_json(profile_path(target).read_text())
    assert set(profile.draft_s) == {draft_key(drafter, False), draft_key(drafter, True)}
    assert draft_key(drafter, True) != draft_key(drafter, False) and profile.draft_s[draft_key(drafter, True)] > 0
    assert planned == [*[profile.draft_s[draft_key(drafter, True)]] * 2, profile.draft_s[draft_key(drafter, False)]]


def test_profile_is_still_used_when_the_cache_cannot_be_written(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("DSPARK_HF_CACHE", str(blocker))  # profiles/ cannot be created under a file
    target = tiny_target(seed=1)
    profile = load_profile(target, DSparkDrafter.from_target(target, markov_rank=8), progress=False)
    assert len(profile.verify_s[1]) == 8 and "could not cache the cost profile" in capsys.readouterr().err


# ----- one request --------------------------------------------------------------------------------------------------


def test_scheduler_picks_the_length_with_the_best_expected_rate():
    """Where each extra token costs no less than the one before, the length with the best rate; with any measured
    costs, the best under their convex envelope (stopping at the first length that does not pay is then exact)."""
    rng = random.Random(1)
    for case in range(400):
        gamma, convex = rng.randint(1, 9), case % 2 == 0
        probs, costs, draft = random_prefix_probs(rng, gamma), random_costs(rng, gamma + 1, convex), rng.uniform(0, 20)
        chosen = PrefixScheduler(costs, draft)(probs)
        envelope = convex_envelope(costs)
        assert all(e <= c + 1e-9 for e, c in zip(envelope, costs, strict=True))
        assert envelope == pytest.approx(costs) if convex else True
        rates = [(1 + sum(probs[:n])) / (draft + envelope[n]) for n in range(gamma + 1)]
        assert rates[chosen] == pytest.approx(max(rates))


def test_convex_envelope_smooths_noisy_steps():
    noisy_flat = [20.0, 20.3, 20.1, 20.6, 20.2, 20.2, 20.4, 20.5]  # an H200 profile: launch-bound, noise only
    envelope = convex_envelope(noisy_flat)
    steps = [b - a for a, b in itertools.pairwise(envelope)]
    assert envelope[0] == 20.0 and envelope[-1] == 20.5 and min(steps) >= 0
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(steps))  # convex: steps never shrink
    assert PrefixScheduler(noisy_flat, 3.0)([0.5, 0.3, 0.2, 0.1, 0.06, 0.04, 0.02]) == 7  # every draft, as when flat
    assert convex_envelope([1.0, 2.0, 3.0, 10.0, 11.0, 12.0]) == [1.0, 2.0, 3.0, 6.0, 9.0, 12.0]


def test_scheduler_decides_each_position_from_the_drafts_before_it():
    """Whether position k is verified must not depend on a_{k+1} ... (they hang on the token drafted at k): otherwise
    sampled drafts would be verified against a q they were not drawn from."""
    rng = random.Random(2)
    for _ in range(300):
        gamma = rng.randint(2, 9)
        probs, costs, draft = random_prefix_probs(rng, gamma), random_costs(rng, gamma + 1, False), rng.uniform(0, 20)
        k = rng.randint(1, gamma - 1)
        later = sorted((rng.uniform(0, probs[k - 1]) for _ in range(gamma - k)), reverse=True)
        chosen = PrefixScheduler(costs, draft)(probs)
        other = PrefixScheduler(costs, draft)(probs[:k] + later)
        assert (chosen >= k) == (other >= k)


def test_a_settled_length_is_the_length_the_policy_picks_from_every_position():
    """`settled(a[:k])` says the policy's L is below k whatever later positions hold (so drafting may stop there):
    it must then equal the L chosen from all positions, and it must say so right after the position that decided."""
    rng = random.Random(4)
    for _ in range(300):
        gamma = rng.randint(2, 9)
        probs, costs, draft = random_prefix_probs(rng, gamma), random_costs(rng, gamma + 1, False), rng.uniform(0, 20)
        policies = [
            PrefixScheduler(costs, draft),
            ConfidenceThreshold(rng.uniform(0, 0.6)),
            FixedLength(rng.randint(0, 9)),
        ]
        for policy in policies:
            chosen = policy(probs)
            for k in range(1, gamma + 1):
                if policy.settled(probs[:k]):
                    assert policy(probs[:k]) == chosen < k, (policy, probs, k)
            if chosen < gamma:
                assert policy.settled(probs[: chosen + 1]), (policy, probs)
    ahead = PrefixScheduler([1.0, 9.0, 9.0], 0.0, look_ahead=True)  # greedy look-ahead reads every position
    assert ahead([0.9, 0.9]) == 0 and not ahead.settled([0.9, 0.9])


class Unsettled:
    """A policy without `settled`: the round drafts its whole block."""

    def __init__(self, policy):
        self.policy = policy

    def __call__(self, prefix_probs):
        return self.policy(prefix_probs)


def test_drafting_stops_where_the_policy_settled_and_the_tokens_stay_the_same():
    """On the CPU a round drafts only until its policy has settled L: the same sampled tokens under a seed, the same
    rounds, fewer positions drafted."""
    target = tiny_target(seed=3, sharp=4.0)
    prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(3))
    drafter = primed_drafter(target, prompt)
    for make in (
        lambda: PrefixScheduler([1.0, 1.3, 1.4, 1.5, 1.9, 2.4, 3.0, 3.7], 0.1, watch_rounds=False),
        lambda: ConfidenceThreshold(0.3),
        lambda: FixedLength(2),
    ):
        runs = []
        for policy in (make(), Unsettled(make())):
            torch.manual_seed(0)
            out = target.generate(prompt, assistant_model=drafter, do_sample=True, max_new_tokens=40, gating=policy)
            stats = drafter.stats
            runs.append((out.tolist(), stats.verified_per_round, stats.accepted_per_round, stats.drafted_tokens))
        (out, verified, accepted, drafted), (whole_out, whole_verified, whole_accepted, whole_drafted) = runs
        assert (out, verified, accepted) == (whole_out, whole_verified, whole_accepted), make()
        assert sum(v > 0 for v in verified) > 3 and drafted < whole_drafted, (make(), drafted, whole_drafted)


def test_scheduler_follows_the_cost_shape():
    probs = [0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05]
    flat = PrefixScheduler([25.0] * 8, draft_s=3.0)  # an H200 at batch 1: verifying more is free
    assert flat(probs) == 7
    steep = PrefixScheduler([33.0 + 4.0 * t for t in range(8)], draft_s=20.0)  # a 2-core CPU: each token costs
    assert 0 < steep(probs) < 7
    assert PrefixScheduler([10.0, 100.0], draft_s=0.0)([0.99]) == 0  # a draft not worth its verification
    assert PrefixScheduler([25.0, 25.0], draft_s=0.0)([0.9, 0.8, 0.7]) == 1  # never beyond the profile


def test_greedy_look_ahead_takes_the_best_length_past_a_cost_step():
    """A 2-core CPU's costs: one token 63 ms, 2-8 tokens ~97-103 ms. The convex envelope spreads that step over every
    length (5.6 ms a token), so the stopping rule judges each draft by a cost it does not have; for greedy decoding
    (any L is lossless) look-ahead takes the length with the best rate over the measured costs."""
    step = [63.5, 97.2, 97.2, 97.2, 97.2, 97.2, 102.9, 102.9]
    probs = [0.5, 0.4, 0.3, 0.2, 0.12, 0.06, 0.03]
    assert PrefixScheduler(step, draft_s=10.0)(probs) == 4  # the fifth draft "costs" 5.6 ms on the envelope: stop
    ahead = PrefixScheduler(step, draft_s=10.0, look_ahead=True)
    rates = [(1 + sum(probs[:n])) / (10.0 + step[n]) for n in range(8)]
    assert ahead(probs) == rates.index(max(rates)) == 5
    rng = random.Random(3)
    for _ in range(300):  # always the best length on the measured (isotonic) costs, whatever their shape
        gamma = rng.randint(1, 9)
        probs, costs, draft = random_prefix_probs(rng, gamma), random_costs(rng, gamma + 1, False), rng.uniform(0, 20)
        rates = [(1 + sum(probs[:n])) / (draft + costs[n]) for n in range(gamma + 1)]
        assert rates[PrefixScheduler(costs, draft, look_ahead=True)(probs)] == pytest.approx(max(rates))


def test_generate_looks_ahead_only_when_greedy(tmp_path, monkeypatch):
    from transformers import GenerationConfig

    from dspark_hf.decoding.routing import resolve_policy

    monkeypatch.setenv("DSPARK_HF_CACHE", str(tmp_path))
    target = tiny_target(seed=1, sharp=4.0)
    drafter = DSparkDrafter.from_target(target).bind(target)
    for do_sample in (False, True):
        config = GenerationConfig(max_length=64, do_sample=do_sample)
        policy = resolve_policy("scheduler", target, drafter, config, static=False)
        assert isinstance(policy, PrefixScheduler) and policy.look_ahead is not do_sample
        assert policy.watch_rounds is not do_sample  # sampling: no timing in its decisions, a seed reproduces it
    prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(1))
    drafter = primed_drafter(target, prompt)
    step = PrefixScheduler([1.0, 1.6, 1.6, 1.6, 1.6, 1.6, 1.7, 1.7], draft_s=0.0, look_ahead=True)
    assert_same_greedy(target, drafter, prompt, max_new_tokens=40, gating=step)
    assert max(drafter.stats.verified_per_round) > 1


def test_scheduler_stops_drafting_that_does_not_pay_and_looks_again():
    """Drafting that costs as much as a forward and gains little is slower than plain decoding: the scheduler skips
    it for 1, 2, 4 ... (at most max_idle_rounds) rounds, drafting once in between to look again."""
    losing = PrefixScheduler([10.0, 12.0, 14.0], draft_s=10.0, max_idle_rounds=4)
    pattern = ""
    for _ in range(20):
        drafted = losing.should_draft()
        if drafted:
            assert losing([0.3, 0.1]) == 1  # still the best L for this round: its drafting is already paid for
        pattern += "D" if drafted else "."
    assert pattern == "D.D..D....D....D...."
    losing([0.99, 0.98])  # a round that pays (2.97 tokens in 24 s beats 1 in 10 s) resets the wait
    assert losing.should_draft()
    losing([0.3, 0.1])
    assert [losing.should_draft() for _ in range(3)] == [False, True, True]
    paying = PrefixScheduler([25.0] * 8, draft_s=3.0)
    for _ in range(10):
        assert paying.should_draft()
        paying([0.9, 0.7, 0.5])
    with pytest.raises(ValueError, match="max_idle_rounds"):
        PrefixScheduler([1.0], 0.0, max_idle_rounds=-1)


def test_scheduler_plans_with_what_rounds_take_beyond_their_modelled_cost():
    """The forecast says drafting pays at the measured costs (2.7 tokens in 49 ms against 1 in 40 ms), but drafting
    rounds take 120 ms (work the profile cannot see): drafting waits 1, 2, 4 ... rounds as when the forecast itself
    says so, and drafts every round again once drafting rounds are measured near their modelled cost."""
    scheduler = PrefixScheduler([0.040, 0.042, 0.044], draft_s=0.005, max_idle_rounds=4)
    pattern = ""
    for _ in range(20):
        if scheduler.should_draft():
            scheduler([0.9, 0.8])
            scheduler.observe(3, 0.120, drafted=True)
            pattern += "D"
        else:
            scheduler.observe(1, 0.040, drafted=False)
            pattern += "."
    assert pattern == "DD.D..D....D....D..."  # the first round plans before any round was measured
    pattern = ""
    for _ in range(40):  # now drafting rounds take 50 ms: 2.7 tokens in 50 ms pays
        if scheduler.should_draft():
            assert scheduler([0.9, 0.8]) == 2
            scheduler.observe(3, 0.050, drafted=True)
            pattern += "D"
        else:
            scheduler.observe(1, 0.040, drafted=False)
            pattern += "."
    assert pattern.endswith("D" * 20)
    trusting = PrefixScheduler([0.040, 0.042, 0.044], draft_s=0.005, watch_rounds=False)
    for _ in range(5):
        assert trusting.should_draft() and trusting([0.9, 0.8]) == 2
        trusting.observe(3, 0.120, drafted=True)


def test_a_run_of_unlucky_rounds_does_not_stop_drafting_that_pays():
    """Rounds at their modelled cost whose drafts all failed (their tokens were never the policy's business: the
    generator scales forecasts by the whole call's record, `Drafting.corrected`) leave drafting on while the forecast
    pays. Judged by recent rounds' tokens, a bad spell made drafting wait ever longer on an H200 (MT-Bench: drafting
    in 4% of the rounds)."""
    scheduler = PrefixScheduler([0.0062, 0.0071, 0.0073, 0.0072, 0.0071], draft_s=0.0006)
    for _ in range(30):
        assert scheduler.should_draft()
        length = scheduler([0.6, 0.35, 0.2, 0.12])
        assert length > 0
        scheduler.observe(length + 1, 0.0006 + scheduler.measured[length], drafted=True)


def test_the_policy_sees_forecasts_scaled_by_how_they_fared_in_this_call():
    """The drafter's survival forecasts are calibrated on its training data; in a call where its drafts fare worse
    (another kind of prompt, sampling), the policy sees them scaled down by accepted / forecast drafts so far."""
    target = tiny_target(seed=2)
    drafting = Drafting(DSparkDrafter.from_target(target, markov_rank=0).bind(target), FixedLength(), 200, set())
    assert drafting.corrected([0.8, 0.5]) == [0.8, 0.5]  # nothing seen yet: the forecast as given
    for _ in range(6):  # rounds that each forecast 1.3 of their drafts to survive, and kept none
        drafting._pending = (2, 2, False, 1.3)
        drafting.record(0)
    scale = FORECAST_PRIOR / (FORECAST_PRIOR + 6 * 1.3)
    assert drafting.corrected([0.8, 0.5]) == pytest.approx([0.8 * scale, 0.5 * scale])
    for _ in range(40):  # then rounds that keep more than forecast: scaled up, never past 1
        drafting._pending = (2, 2, False, 0.5)
        drafting.record(2)
    assert drafting.corrected([0.8, 0.5])[0] == 1.0 and drafting.corrected([0.8, 0.5])[1] > 0.5


def test_rounds_are_measured_for_the_policy_but_not_the_first_nor_one_that_did_one_off_work(monkeypatch):
    """The policy's `observe` gets the tokens of each round's forward and its wall clock, except the first
    (Transformers' loop times the prefill into it) and a round that did work done once and then kept: oneDNN packing
    its weights, a CUDA graph captured for a new verification length (on the GPU such a round takes ~10x a round;
    judged by it, drafting backed off for most of a call)."""
    seen = []

    class Watching(FixedLength):
        def observe(self, tokens, seconds, drafted):
            seen.append((tokens, drafted))

    packs = [0]
    monkeypatch.setattr(round_module, "packs_made", lambda: packs[0])
    target = tiny_target(seed=2)
    drafting = Drafting(DSparkDrafter.from_target(target, markov_rank=0).bind(target), Watching(), 200, set())
    rounds = [(1, 0, 0, 4), (2, 0, 0, 4), (3, 1, 0, 4), (0, 0, 0, 0), (4, 0, 1, 4), (2, 0, 0, 4)]
    for accepted, packing, capturing, drafted in rounds:
        packs[0] += packing
        if capturing:
            notices.captured()
        drafting._pending, drafting._drafting_ran = (drafted, drafted, False, 1.0), drafted > 0
        drafting.record(accepted)
    assert seen == [(5, True), (1, False), (5, True)]  # the tokens each round's forward carried


# ----- the batched form (Algorithm 1) ---------------------------------------------------------------------------------


def test_batch_schedule_is_optimal_when_marginal_costs_never_fall():
    """Against brute force over every per-request length: the greedy, early-stopped admission is the best."""
    rng = random.Random(2)
    for _ in range(150):
        batch, gamma = rng.randint(1, 3), rng.randint(1, 4)
        probs = [random_prefix_probs(rng, gamma) for _ in range(batch)]
        costs = random_costs(rng, batch * (gamma + 1))
        cost = lambda n, costs=costs: costs[n - 1]  # noqa: E731
        draft = rng.uniform(0, 10)
        lengths = schedule_batch(probs, cost, draft)
        best = max(rate(ls, probs, cost, draft) for ls in itertools.product(range(gamma + 1), repeat=batch))
        assert rate(lengths, probs, cost, draft) == pytest.approx(best)


def test_batch_schedule_stops_early_because_throughput_is_unimodal():
    """The paper's reason for stopping at the first admission that does not raise throughput: a_k falls with k, so
    ranked admissions bring ever smaller gains, while each extra token costs at least as much as the last — the
    modeled throughput then rises and falls once, and no later admission can beat the stopping point."""
    rng = random.Random(3)
    for _ in range(100):
        probs = [random_prefix_probs(rng, 6) for _ in range(4)]
        costs = random_costs(rng, 28)
        ranked = sorted(((a, k, r) for r, p in enumerate(probs) for k, a in enumerate(p)), key=lambda x: (-x[0], x[1]))
        gains = list(itertools.accumulate([4.0] + [a for a, _, _ in ranked]))
        curve = [g / costs[3 + n] for n, g in enumerate(gains)]
        peak = curve.index(max(curve))
        assert all(a < b for a, b in itertools.pairwise(curve[: peak + 1]))
        assert all(a >= b for a, b in itertools.pairwise(curve[peak:]))  # never rises again after the peak
        assert sum(schedule_batch(probs, lambda n, costs=costs: costs[n - 1])) == peak

    # without the premise the early stop can be wrong: a cost that jumps, then stays flat (cheaper marginal tokens)
    probs = [[0.9, 0.8, 0.7, 0.6]]
    jump = [10.0, 30.0, 30.0, 30.0, 30.0]
    stopped = schedule_batch(probs, lambda n: jump[n - 1])
    assert stopped == [0] and rate([4], probs, lambda n: jump[n - 1], 0.0) > rate(
        stopped, probs, lambda n: jump[n - 1], 0.0
    )


def test_batch_schedule_flat_versus_growing_costs_and_bad_input():
    probs = [[0.9, 0.5, 0.2], [0.6, 0.1, 0.01]]
    assert schedule_batch(probs, lambda n: 25.0, draft_cost=3.0) == [3, 3]  # flat: admit everything with a > 0
    grows = schedule_batch(probs, lambda n: 10.0 + 6.0 * n, draft_cost=3.0)
    assert grows[0] >= grows[1] and sum(grows) < 6  # the confident request gets more of the budget
    # a measured profile prices a batched forward by the tokens it carries per sequence
    profile = CostProfile("cpu", "t", "float32", 256, 2, verify_s={2: [0.02, 0.03, 0.05, 0.08]})
    cost = lambda n: profile.verify_time(n / 2, batch=2)  # noqa: E731
    best = max(itertools.product(range(4), repeat=2), key=lambda ls: rate(ls, probs, cost, 0.005))
    assert rate(schedule_batch(probs, cost, 0.005), probs, cost, 0.005) == pytest.approx(rate(best, probs, cost, 0.005))
    with pytest.raises(ValueError, match="never increase"):
        schedule_batch([[0.5, 0.6]], lambda n: 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        schedule_batch([[1.5]], lambda n: 1.0)


# ----- the scheduler inside generate() -------------------------------------------------------------------------------


def test_scheduler_is_the_default_gating_and_lossless(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPARK_HF_CACHE", str(tmp_path))
    assert DSparkConfig().gating == "scheduler"
    for seed in range(3):
        target = tiny_target(seed=seed, sharp=4.0)
        prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(seed))
        drafter = primed_drafter(target, prompt)
        assert_same_greedy(target, drafter, prompt, max_new_tokens=40)  # gating=None: the config's scheduler
        stats = drafter.stats
        assert stats.rounds > 0 and all(v <= drafter.config.block_size for v in stats.verified_per_round)
    assert len(list((tmp_path / "profiles").glob("*.json"))) == 1  # one model shape, one device: one profile


def test_rounds_without_drafting_stay_lossless():
    """Where drafting does not pay, generate() runs plain one-token rounds between drafting ones: the same tokens."""
    target = tiny_target(seed=6, sharp=4.0)
    prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(6))
    drafter = DSparkDrafter.from_target(target, markov_rank=8)  # untrained: its drafts are rarely right
    dear = PrefixScheduler(
        [1.0] * 8, draft_s=100.0, max_idle_rounds=8, watch_rounds=False
    )  # drafting costs 100 forwards
    assert_same_greedy(target, drafter, prompt, max_new_tokens=40, gating=dear)
    stats = drafter.stats
    assert 1 + stats.rounds + stats.accepted_tokens == 40  # the prefill's token, then one per round plus accepted
    assert 3 <= sum(v > 0 for v in stats.verified_per_round) <= 8, stats.verified_per_round  # 1, 2, 4, 8 rounds apart
    drafter = primed_drafter(target, prompt)
    assert_same_greedy(
        target, drafter, prompt, max_new_tokens=40, gating=PrefixScheduler([1.0] * 8, 0.1, watch_rounds=False)
    )
    verified = drafter.stats.verified_per_round
    assert all(v > 0 for v in verified[:-1]), verified  # it pays: every round drafts (the last has no room left)


def test_make_gating_names_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPARK_HF_CACHE", str(tmp_path))
    assert isinstance(make_gating("fixed"), FixedLength) and make_gating("fixed").length is None
    assert make_gating("fixed:3").length == 3
    assert make_gating("threshold", threshold=0.2).threshold == 0.2
    assert make_gating("threshold:0.4").threshold == 0.4 and isinstance(
        make_gating("threshold:0.4"), ConfidenceThreshold
    )
    with pytest.raises(ValueError, match="needs the target and the drafter"):
        make_gating("scheduler")
    target = tiny_target(seed=0)
    drafter = DSparkDrafter.from_target(target, markov_rank=8)
    scheduler = make_gating("scheduler", target=target, drafter=drafter)
    profile = load_profile(target, drafter, progress=False)
    assert isinstance(scheduler, PrefixScheduler) and scheduler.verify_s == convex_envelope(profile.verify_s[1])
    for bad in ("sheduler", "fixed:-1", "fixed:2.5", "threshold:x", "scheduler:3"):
        with pytest.raises(ValueError, match="Unknown gating"):
            make_gating(bad)
    with pytest.raises(ValueError, match="Unknown gating"):
        DSparkConfig(gating="fastest")


def test_fixed_prefix_length_from_its_name():
    target = tiny_target(seed=2, sharp=4.0)
    prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(2))
    drafter = primed_drafter(target, prompt)
    assert_same_greedy(target, drafter, prompt, max_new_tokens=30, gating="fixed:2")
    assert max(drafter.stats.verified_per_round) == 2
