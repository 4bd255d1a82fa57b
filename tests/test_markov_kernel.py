"""The fused Triton kernel against its PyTorch reference, on fresh random inputs (CPU: TRITON_INTERPRET=1)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_target

from dspark_hf import DSparkDrafter
from dspark_hf import markov_kernel as mk

pytestmark = pytest.mark.skipif(mk.triton is None, reason="triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
Q_RTOL, CONF_ATOL = 1e-5, 1e-5  # both paths accumulate in float32; only the summation order differs


def random_round(vocab, rank, steps, dtype, sample, seed, d=96, temps=True):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE)

    w1 = rand(vocab, rank, scale=0.5).to(dtype) if rank else None
    w2 = rand(vocab, rank, scale=0.5).to(dtype) if rank else None
    return dict(
        base_logits=rand(steps, vocab, scale=3.0),
        hidden=rand(steps, d).to(dtype),
        anchor=torch.randint(0, vocab, (1,), generator=g).to(DEVICE),
        w1=w1,
        w2=w2,
        conf_weight=rand(d + rank, scale=0.1).to(dtype),
        conf_bias=rand(1),
        conf_temps=(torch.rand(steps, generator=g) + 0.5).to(DEVICE) if temps else None,
        temperature=0.7 if sample else None,
        uniforms=torch.rand(steps, vocab, generator=g).to(DEVICE) if sample else None,
    )


def assert_same(args, **kernel_kwargs):
    ref_tokens, ref_q, ref_conf = mk.markov_draft_reference(**args)
    tokens, q, conf = mk.markov_draft_triton(**args, **kernel_kwargs)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(q, ref_q, rtol=Q_RTOL, atol=Q_RTOL * ref_q.abs().max().item())
    torch.testing.assert_close(conf, ref_conf, rtol=0, atol=CONF_ATOL)
    return tokens


CASES = [  # (vocab, rank, steps, dtype, sample): the grid, kept small enough for the interpreter
    (49152, 64, 8, torch.float32, False),
    (49152, 64, 7, torch.bfloat16, True),
    (49152, 0, 16, torch.float32, True),
    (49152, 256, 4, torch.bfloat16, False),
    (32000, 256, 5, torch.float32, True),
    (32000, 0, 4, torch.bfloat16, False),
    (151936, 0, 6, torch.bfloat16, True),
    (151936, 64, 4, torch.float32, False),
]


@pytest.mark.parametrize(("vocab", "rank", "steps", "dtype", "sample"), CASES)
def test_kernel_matches_reference(vocab, rank, steps, dtype, sample):
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item())  # fresh inputs every run; the seed is in the failure report
    args = random_round(vocab, rank, steps, dtype, sample, seed)
    tokens = assert_same(args)
    assert tokens.min() >= 0 and tokens.max() < vocab, seed


def test_ties_break_to_the_lowest_index():
    args = random_round(4096, 16, 4, torch.float32, False, seed=3)
    args["w1"].zero_()  # no bias: the base logits decide alone
    args["base_logits"][:, [100, 2000, 4000]] = 50.0  # three equal maxima at every position
    tokens = assert_same(args)
    assert tokens.tolist() == [100] * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="several CTAs need a GPU (the interpreter runs one)")
@pytest.mark.parametrize("num_ctas", [1, 3, 17, 64])
def test_grid_barrier_with_many_ctas(num_ctas):
    for sample in (False, True):
        assert_same(random_round(49152, 64, 8, torch.bfloat16, sample, seed=num_ctas), num_ctas=num_ctas)


def test_backend_dispatch(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert mk.resolve_backend(cpu) == "torch"
    assert mk.resolve_backend(cuda) == "triton"
    assert mk.resolve_backend(cuda, "torch") == "torch"
    monkeypatch.setenv(mk.BACKEND_ENV, "torch")
    assert mk.resolve_backend(cuda) == "torch"
    monkeypatch.setenv(mk.BACKEND_ENV, "triton")
    assert mk.resolve_backend(cpu) == "triton"
    monkeypatch.setenv(mk.BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match="DSPARK_KERNEL"):
        mk.resolve_backend(cpu)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_generate_is_lossless_through_either_backend(monkeypatch, backend):
    monkeypatch.setenv(mk.BACKEND_ENV, backend)
    target = tiny_target(seed=1, sharp=4.0).to(DEVICE)
    drafter = DSparkDrafter.from_target(target, markov_rank=16, block_size=5)
    with torch.no_grad():
        drafter.markov_out.weight.normal_()
    prompt = torch.tensor([[3, 1, 4, 1, 5]], device=DEVICE)
    plain = target.generate(prompt, max_new_tokens=20, do_sample=False)
    spec = target.generate(prompt, assistant_model=drafter, max_new_tokens=20, do_sample=False, gating="fixed")
    assert spec.tolist() == plain.tolist()
    torch.manual_seed(0)
    sampled = target.generate(prompt, assistant_model=drafter, max_new_tokens=20, do_sample=True, temperature=0.9)
    torch.manual_seed(0)
    again = target.generate(prompt, assistant_model=drafter, max_new_tokens=20, do_sample=True, temperature=0.9)
    assert sampled.tolist() == again.tolist()


def test_a_failed_launch_leaves_the_barrier_counter_in_step():
    """If a launch never reaches the GPU, the host must not count its arrivals: the next launch would spin forever."""
    args = random_round(512, 8, 3, torch.float32, False, seed=9)
    assert_same(args)
    broken = dict(args, hidden=None)  # refused while the launch arguments are built, before anything is enqueued
    with pytest.raises(AttributeError):
        mk.markov_draft_triton(**broken)
    assert_same(args)  # would hang if the counter had been advanced for the refused launch
