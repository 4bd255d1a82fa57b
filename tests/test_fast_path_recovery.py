"""The fast path never takes a process down: a failed capture, or any error inside the static loop, falls back to an
exact slower path for that call with one warning, and the next call takes the fast path again; graphs are never
replayed on weights that moved. On the CPU the captures are forced (and fail for real: no CUDA there) or injected;
on a GPU the same tests inject the failure into real captures. The real SmolLM2 target goes through the static
loop's whole growth sequence (short, past the first capacity step, short again) in one process."""

from __future__ import annotations

import pytest
import torch
from helpers import eval_prompts, primed_drafter, tiny_target

from dspark_hf import fallback_counts, load_drafter, notices
from dspark_hf.decoding import round, static_target
from dspark_hf.decoding.graphs import GraphSet
from dspark_hf.decoding.static_target import CAPACITY_STEP, StaticTarget
from dspark_hf.targets import encode_prompt

pytestmark = pytest.mark.compat
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def setup(seed: int = 0):
    target = tiny_target(seed=seed, sharp=4.0).to(DEVICE)
    prompt = torch.randint(1, 32, (1, 6), generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    return target, prompt, primed_drafter(target, prompt)


def generate(target, prompt, drafter, **kwargs) -> list[int]:
    return target.generate(prompt, assistant_model=drafter, max_new_tokens=40, do_sample=False, **kwargs)[0].tolist()


@pytest.fixture()
def warnings_seen(monkeypatch, capsys):
    """A fresh warn-once registry; returns a function giving the `[dspark]` lines printed so far."""
    monkeypatch.setattr(notices, "_WARNED", set())
    return lambda: [line for line in capsys.readouterr().err.splitlines() if line.startswith("[dspark]")]


def test_a_failed_capture_falls_back_to_exact_uncaptured_rounds(monkeypatch, tmp_path, warnings_seen):
    monkeypatch.setenv("DSPARK_HF_CACHE", str(tmp_path))
    monkeypatch.setenv("DSPARK_STATIC_LOOP", "1")
    monkeypatch.setenv("DSPARK_KERNEL", "triton")  # the drafting round is captured only with the fused kernel
    for module in (round, static_target):  # on the CPU too: the capture is tried
        monkeypatch.setattr(module, "capture_graphs", lambda device: True)

    def failing_capture(self, key, step, warmup=2):
        raise RuntimeError("injected capture failure")

    monkeypatch.setattr(GraphSet, "capture", failing_capture)
    target, prompt, drafter = setup(0)
    plain = target.generate(prompt, max_new_tokens=40, do_sample=False)[0].tolist()
    before = fallback_counts()
    for call in range(1, 3):  # the second call tries afresh, and fails the same way: said once, counted every time
        assert generate(target, prompt, drafter, gating="fixed") == plain
        assert drafter.stats.loop == "static" and drafter.stats.accepted_tokens > 0
        assert drafter.stats.fallbacks == ["drafting-capture", "verify-capture"]
        assert drafter.stats.captures == 0 and "fell back: drafting-capture, verify-capture" in repr(drafter.stats)
        counts = fallback_counts()
        for kind in ("drafting-capture", "verify-capture"):
            assert counts[kind] == before.get(kind, 0) + call
    lines = warnings_seen()
    assert len(lines) == 2, lines  # once for verification, once for drafting, in the whole process
    assert any("verification unavailable" in line for line in lines)
    assert any("drafting unavailable" in line for line in lines)
    assert all("injected capture failure" in line for line in lines)


def test_an_error_in_the_static_loop_reruns_the_call_on_transformers_loop(monkeypatch, warnings_seen):
    monkeypatch.setenv("DSPARK_STATIC_LOOP", "1")
    target, prompt, drafter = setup(1)
    plain = target.generate(prompt, max_new_tokens=40, do_sample=False)[0].tolist()
    forward, calls = StaticTarget.forward, []

    def failing_forward(self, ids, start):
        calls.append(start)
        if len(calls) == 3:  # mid-call: the prompt and a round went through already
            raise RuntimeError("injected failure in a verification forward")
        return forward(self, ids, start)

    monkeypatch.setattr(StaticTarget, "forward", failing_forward)
    before = fallback_counts().get("static-loop", 0)
    assert generate(target, prompt, drafter, gating="fixed") == plain
    assert drafter.stats.loop == "transformers" and drafter.stats.fallbacks == ["static-loop"]
    assert generate(target, prompt, drafter, gating="fixed") == plain  # the next call: the static loop again
    assert drafter.stats.loop == "static" and len(calls) > 4 and drafter.stats.fallbacks == []
    assert fallback_counts()["static-loop"] == before + 1
    lines = warnings_seen()
    assert len(lines) == 1 and "injected failure in a verification forward" in lines[0], lines


def test_graphs_are_never_replayed_on_weights_that_moved(monkeypatch):
    """Casting the target away and back gives it new weight tensors: the kept static cache (and its graphs) must go."""
    monkeypatch.setenv("DSPARK_STATIC_LOOP", "1")
    target, prompt, drafter = setup(2)
    plain = target.generate(prompt, max_new_tokens=40, do_sample=False)[0].tolist()
    assert generate(target, prompt, drafter, gating="fixed") == plain
    kept = target._dspark_static_target
    assert generate(target, prompt, drafter, gating="fixed") == plain and target._dspark_static_target is kept
    target.to(torch.float64).to(torch.float32)
    assert not kept.matches(target)
    assert generate(target, prompt, drafter, gating="fixed") == plain
    assert target._dspark_static_target is not kept and target._dspark_static_target.matches(target)


@pytest.mark.slow
def test_the_static_loop_through_its_growth_sequence_in_one_process(smollm2, monkeypatch):
    """Short prompt, one past the first capacity step, short again; prompt lookup on and off; greedy and sampled; one
    process, one target, the shipped drafter: every greedy output is plain generate()'s."""
    model, tokenizer = smollm2
    drafter, trained = load_drafter(None, model)
    assert trained
    monkeypatch.setenv("DSPARK_STATIC_LOOP", "1")
    monkeypatch.delattr(model, "_dspark_static_target", raising=False)  # from the first step, whatever ran before
    short = eval_prompts("gsm8k", 3)
    # ~1200 tokens: past the first capacity step, not far (a longer prefill only costs the suite time)
    long = "\n\n".join(eval_prompts("gsm8k", 16)[3:]) + "\n\nSolve only the last problem above."
    sequence = [  # (prompt, prompt lookup tokens, sampled)
        (short[0], 0, False), (long, 16, False), (short[1], 16, False), (long, 0, True), (short[2], 16, True),
        (short[0], 0, True), (short[2], 0, False),
    ]  # fmt: skip
    capacities = []
    for i, (text, lookup, sampled) in enumerate(sequence):
        inputs = encode_prompt(tokenizer, text, model.device)
        kwargs = dict(do_sample=True, temperature=0.8, top_k=0) if sampled else dict(do_sample=False)
        if lookup:
            kwargs["prompt_lookup_num_tokens"] = lookup
        torch.manual_seed(i)
        out = model.generate(**inputs, assistant_model=drafter, max_new_tokens=24, **kwargs)
        assert drafter.stats.loop == "static"
        capacities.append(model._dspark_static_target.capacity)
        assert out.shape[1] <= inputs["input_ids"].shape[1] + 24
        if not sampled:
            plain = model.generate(**inputs, max_new_tokens=24, do_sample=False)
            assert out.tolist() == plain.tolist(), f"call {i}: {tokenizer.decode(out[0, -20:])!r}"
    assert encode_prompt(tokenizer, long, "cpu")["input_ids"].shape[1] > CAPACITY_STEP
    assert capacities[0] == CAPACITY_STEP and capacities[1] > CAPACITY_STEP and capacities[-1] == capacities[1]
