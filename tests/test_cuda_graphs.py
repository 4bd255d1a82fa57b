"""The fixed-shape drafting round of `DraftingGraphs` (CUDA graphs on a GPU): it must draft exactly what the ordinary
eager round drafts. On the CPU its steps run eagerly (`capture=False`), with the PyTorch loop and with the fused
kernel under the Triton interpreter; on a GPU the captured graphs are replayed."""

from __future__ import annotations

import pytest
import torch
from helpers import primed_drafter, tiny_target

from dspark_hf import FixedLength
from dspark_hf.decoding import round
from dspark_hf.decoding.round import Drafting, DraftingGraphs

pytestmark = pytest.mark.compat
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def fixed_shape_rounds(monkeypatch, capture: bool) -> None:
    """Make every generator draft through `DraftingGraphs`, captured or not, wherever it runs."""

    def graphs(drafter, settings, max_length, max_new):
        return DraftingGraphs(drafter, max_length, max_new, capture=capture).use(settings, max_new)

    monkeypatch.setattr(round, "drafting_graphs", graphs)


def rounds_of(target, drafter, prompt, **kwargs) -> tuple[list[int], list[int], list[int]]:
    torch.manual_seed(0)
    out = target.generate(prompt, assistant_model=drafter, max_new_tokens=40, **kwargs)
    return out[0].tolist(), drafter.stats.accepted_per_round, drafter.stats.verified_per_round


CASES = {
    "greedy": dict(do_sample=False, gating="fixed"),
    "greedy-lookup-scheduler": dict(do_sample=False, prompt_lookup_num_tokens=6),
    "sampling": dict(do_sample=True, temperature=0.7, gating="fixed"),
    "top-k": dict(do_sample=True, top_k=5, gating="fixed"),
}


# the interpreter takes a minute per sampled case (the kernel's own tests cover its sampling there): greedy only
KERNEL_CASES = [
    (kernel, case)
    for kernel in ("torch", "triton")
    for case in CASES
    if kernel == "torch" or torch.cuda.is_available() or not CASES[case]["do_sample"]
]


@pytest.mark.parametrize(("kernel", "case"), KERNEL_CASES)
def test_fixed_shape_round_drafts_what_the_eager_round_drafts(monkeypatch, tmp_path, case, kernel):
    monkeypatch.setenv("DSPARK_HF_CACHE", str(tmp_path))  # the scheduler profiles the tiny target into tmp
    monkeypatch.setenv("DSPARK_KERNEL", kernel)  # on the CPU "triton" is the kernel under the interpreter
    target = tiny_target(seed=4, sharp=4.0).to(DEVICE)
    prompt = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    drafter = primed_drafter(target, prompt)
    plain = target.generate(prompt, max_new_tokens=40, do_sample=False)[0].tolist()
    monkeypatch.setenv("DSPARK_CUDA_GRAPHS", "0")  # the ordinary eager round first
    eager = rounds_of(target, drafter, prompt, **CASES[case])
    fixed_shape_rounds(monkeypatch, capture=DEVICE == "cuda" and kernel == "triton")  # on a GPU: captured, replayed
    fixed = rounds_of(target, drafter, prompt, **CASES[case])
    assert fixed == eager  # same tokens, same rounds: the same drafts were verified
    assert len(eager[1]) > 3 and sum(eager[1]) > 3, "drafts must be accepted, or this compares nothing"
    if not CASES[case]["do_sample"]:
        assert eager[0] == plain


def test_rows_past_the_new_ones_are_overwritten_and_never_seen():
    """An append writes `max_new` rows; the junk rows past the verified ones must not change the next draft."""
    target = tiny_target(seed=5, sharp=4.0).to(DEVICE)
    ids = torch.randint(0, 32, (1, 10), generator=torch.Generator().manual_seed(5)).to(DEVICE)  # 9 verified, anchor
    drafter = primed_drafter(target, ids)
    generator = Drafting(drafter.bind(target), FixedLength(), 64, set())
    graphs = DraftingGraphs(drafter, 64, rows=8, capture=DEVICE == "cuda").use(generator.settings, 8)
    hidden = target(ids[:, :9], output_hidden_states=True).hidden_states
    for start, new in ((0, 3), (3, 2), (5, 4)):  # the context grows in steps, as rounds append
        graphs.append(drafter.context_features(tuple(h[:, start:] for h in hidden), new))
    assert graphs.cache.length == 9
    generator.cache = graphs.cache  # the eager round reads the same cache, sliced to its length
    eager, fixed = generator._draft_eager(ids), graphs.draft(ids[:, 9])
    assert eager.tokens.tolist() == fixed.tokens.tolist()
    torch.testing.assert_close(eager.q_logits, fixed.q_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eager.prefix_probs, fixed.prefix_probs)
    # and the eager append of the same features into a fresh cache gives the same keys
    fresh = drafter.new_context_cache()
    drafter.append_context(fresh, drafter.fuse_context(hidden))
    for layer in range(len(drafter.layers)):
        torch.testing.assert_close(fresh.get(layer)[0], graphs.cache.get(layer)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fixed_shape", [False, True])
def test_context_kept_while_drafting_waits_goes_in_at_once(monkeypatch, fixed_shape):
    """Rounds that do not draft append nothing to the drafter's context cache; the next draft appends every position
    they verified in one step (a graph replay where it fits), giving the cache that appending round by round gives."""
    if fixed_shape:
        fixed_shape_rounds(monkeypatch, capture=DEVICE == "cuda")
    target = tiny_target(seed=5, sharp=4.0).to(DEVICE)
    ids = torch.randint(0, 32, (1, 12), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    drafter = primed_drafter(target, ids)
    drafting = Drafting(drafter.bind(target), FixedLength(), 64, set())
    hidden = target(ids[:, :11], output_hidden_states=True).hidden_states
    drafting.observe(hidden, 6)  # the prompt's 6 positions, appended by the first draft
    drafting.propose(ids[:, :7])
    assert drafting.cache.length == 6
    for start, end in ((6, 9), (9, 10), (10, 11)):  # three rounds that did not draft: nothing appended
        drafting.observe(tuple(h[:, start:] for h in hidden), end)
        assert drafting.cache.length == 6
    drafting.propose(ids[:, :12])  # 5 positions in one append (a replay in the fixed-shape round)
    assert drafting.cache.length == 11
    appended = drafter.new_context_cache()
    drafter.append_context(appended, drafter.fuse_context(hidden))
    for layer in range(len(drafter.layers)):
        torch.testing.assert_close(drafting.cache.get(layer)[0], appended.get(layer)[0], rtol=1e-5, atol=1e-6)
