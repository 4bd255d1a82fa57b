"""End to end on the real SmolLM2-135M-Instruct target: DSpark greedy output is token-identical to plain
`generate()` on prompts from GSM8K, HumanEval and MT-Bench, plus one long prompt.

Runs on the CPU everywhere (CI) and, where CUDA is present (the H200), also on the GPU, in float32. (In bfloat16 the
target's own logits differ between a one-token forward and a block-verify forward, so near-ties can break
differently, so bfloat16 output is not held to that.)
"""

from __future__ import annotations

import pytest
import torch
from helpers import eval_prompts, prime_markov_head

from dspark_hf import DSparkDrafter, load_target
from dspark_hf.targets import encode_prompt

pytestmark = pytest.mark.slow  # the first two tests run again on transformers 5.17 (`compat`)

NEW_TOKENS = 40
PROMPTS = {name: eval_prompts(name, 5) for name in ("gsm8k", "humaneval", "mt-bench")}
LONG_PROMPT = "\n\n".join(eval_prompts("gsm8k", 40)[7:]) + "\n\nSolve only the last problem above."


NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the H200)")


@pytest.fixture(
    scope="module",
    params=[
        ("cpu", "float32"),
        pytest.param(("cuda", "float32"), marks=NO_CUDA),
    ],
    ids=["cpu-fp32", "cuda-fp32"],
)
def target(request, smollm2):
    device, dtype = request.param
    return smollm2 if device == "cpu" else load_target(device=device, dtype=dtype)


@pytest.fixture(scope="module")
def cases(target, request):
    """(domain, encoded prompt, plain greedy output) for 15 eval prompts and a long one. The compat pass (`-m compat`,
    the generation tests again on the oldest supported transformers) takes the first two of each set and the long
    one: the same code paths, in a third of the time."""
    model, tokenizer = target
    per_set = 2 if request.config.option.markexpr == "compat" else len(PROMPTS["gsm8k"])
    rows = []
    for name, text in [*((n, t) for n, texts in PROMPTS.items() for t in texts[:per_set]), ("long", LONG_PROMPT)]:
        inputs = encode_prompt(tokenizer, text, model.device)
        plain = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        rows.append((name, inputs, plain))
    return rows


@pytest.fixture(scope="module")
def drafter(target, cases):
    """A real DSparkDrafter whose Markov head holds bigrams of the target's own outputs, so many drafts are accepted
    and some are not: both verification outcomes are exercised on the real model."""
    model, _ = target
    fresh = DSparkDrafter.from_target(model, markov_rank=256)
    return prime_markov_head(fresh, [plain[0].tolist() for _, _, plain in cases])


@pytest.mark.compat
def test_greedy_token_identical_on_eval_prompts(target, cases, drafter):
    model, tokenizer = target
    assert len(cases) in (7, 16) and cases[-1][1]["input_ids"].shape[1] > 1000
    rounds = accepted = multi = 0
    for i, (name, inputs, plain) in enumerate(cases):
        gating = ("fixed", "threshold", "scheduler")[i % 3]  # the scheduler: L from this device's measured costs
        spec = model.generate(
            **inputs, assistant_model=drafter, max_new_tokens=NEW_TOKENS, do_sample=False, gating=gating
        )
        assert spec.tolist() == plain.tolist(), f"{name} prompt {i} ({gating}): {tokenizer.decode(spec[0, -20:])!r}"
        rounds += drafter.stats.rounds
        accepted += drafter.stats.accepted_tokens
        multi += sum(1 for a in drafter.stats.accepted_per_round if a >= 2)
    tau = (accepted + rounds) / rounds
    # the accept path must really have run: many drafts accepted, often several in one round
    assert tau > 1.25 and multi >= len(cases), f"mean tau {tau:.2f}, {multi} rounds with >= 2 accepted drafts"


@pytest.mark.compat
def test_sampling_runs_and_is_reproducible_under_a_seed(target, cases, drafter):
    model, _ = target
    _, inputs, _ = cases[0]
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(
            model.generate(
                **inputs, assistant_model=drafter, do_sample=True, temperature=0.8, top_p=0.9, max_new_tokens=24
            )
        )
    assert outs[0].tolist() == outs[1].tolist()
    assert outs[0].shape[1] > inputs["input_ids"].shape[1] and drafter.stats.rounds > 0
    assert int(outs[0].max()) < model.config.vocab_size


def test_greedy_token_identical_with_a_draft_vocabulary(target, cases, drafter):
    """The real target with the drafter restricted to a draft vocabulary that holds only some of the tokens the target
    writes: drafts outside it are never proposed, the output does not change."""
    model, tokenizer = target
    written = sorted({t for _, _, plain in cases for t in plain[0].tolist()})
    drafter.set_draft_vocab(written[::2] + list(range(0, model.config.vocab_size, 50)))
    try:
        accepted = 0
        for i, (name, inputs, plain) in enumerate(cases[::5]):
            spec = model.generate(**inputs, assistant_model=drafter, max_new_tokens=NEW_TOKENS, do_sample=False)
            assert spec.tolist() == plain.tolist(), f"{name} prompt {5 * i}: {tokenizer.decode(spec[0, -20:])!r}"
            accepted += drafter.stats.accepted_tokens
        assert accepted > 0
    finally:
        drafter.set_draft_vocab(None)


def test_greedy_token_identical_with_prompt_lookup(target, cases, drafter):
    """`prompt_lookup_num_tokens` beside the drafter: rounds that verify looked-up tokens, output unchanged."""
    model, tokenizer = target
    lookup_rounds = 0
    for i, (name, inputs, plain) in enumerate(cases[::2]):
        gating = ("fixed", "scheduler")[i % 2]
        spec = model.generate(
            **inputs, assistant_model=drafter, max_new_tokens=NEW_TOKENS, do_sample=False, gating=gating,
            prompt_lookup_num_tokens=10,
        )  # fmt: skip
        assert spec.tolist() == plain.tolist(), f"{name} prompt {2 * i} ({gating}): {tokenizer.decode(spec[0, -20:])!r}"
        lookup_rounds += drafter.stats.lookup_rounds
    assert lookup_rounds >= 10


@pytest.mark.compat
def test_greedy_token_identical_through_the_other_loop(target, cases, drafter, monkeypatch):
    """The tests above run the loop `generate()` takes by default: Transformers' on the CPU, the static one
    (`static_loop.py`, CUDA graphs) on a GPU. Here each device runs the other one, with and without prompt lookup."""
    model, tokenizer = target
    other = "transformers" if model.device.type == "cuda" else "static"
    monkeypatch.setenv("DSPARK_STATIC_LOOP", "0" if other == "transformers" else "1")
    accepted = 0
    for i, (name, inputs, plain) in enumerate(cases[::5]):
        kwargs = dict(gating="scheduler", prompt_lookup_num_tokens=16) if i % 2 else dict(gating="fixed")
        spec = model.generate(**inputs, assistant_model=drafter, max_new_tokens=NEW_TOKENS, do_sample=False, **kwargs)
        assert spec.tolist() == plain.tolist(), f"{name} prompt {5 * i} ({kwargs}): {tokenizer.decode(spec[0, -20:])!r}"
        assert drafter.stats.loop == other
        accepted += drafter.stats.accepted_tokens
    assert accepted >= 2 * len(cases[::5])
