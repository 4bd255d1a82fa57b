"""The fused Triton kernel against its PyTorch reference, on fresh random inputs (CPU: TRITON_INTERPRET=1)."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_target
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from dspark_hf import DSparkDrafter
from dspark_hf.kernels import markov as mk

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


def assert_same(args, top_k=None, top_p=None, **kernel_kwargs):
    """Kernel with top-k / top-p settings vs the reference running Transformers' own warpers."""
    warpers = []
    if top_k is not None:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None:
        warpers.append(TopPLogitsWarper(top_p))
    prefix_ids = args["anchor"].view(1, 1)
    ref_tokens, ref_q, ref_conf, ref_prefix = mk.markov_draft_reference(
        **args, logits_processor=LogitsProcessorList(warpers), prefix_ids=prefix_ids
    )
    tokens, q, conf, prefix = mk.markov_draft_triton(**args, top_k=top_k, top_p=top_p, **kernel_kwargs)
    assert torch.equal(tokens, ref_tokens)
    assert torch.equal(q.isinf(), ref_q.isinf())  # the same tokens filtered out
    scale = ref_q[ref_q.isfinite()].abs().max().item()
    torch.testing.assert_close(q, ref_q, rtol=Q_RTOL, atol=Q_RTOL * scale)
    torch.testing.assert_close(conf, ref_conf, rtol=0, atol=CONF_ATOL)
    torch.testing.assert_close(prefix, ref_prefix, rtol=0, atol=CONF_ATOL)
    return tokens, q


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
    tokens, _ = assert_same(args)
    assert tokens.min() >= 0 and tokens.max() < vocab, seed


TOP_CASES = [  # (vocab, rank, steps, dtype, sample, top_k, top_p); Transformers' default sampling is top_k=50
    (49152, 64, 7, torch.float32, True, 50, None),
    (49152, 64, 6, torch.bfloat16, True, 50, 0.9),
    (32000, 0, 5, torch.float32, True, 1, None),
    (32000, 256, 3, torch.bfloat16, True, 128, 0.5),
    (151936, 0, 2, torch.bfloat16, True, 50, 0.95),
    (49152, 0, 4, torch.float32, True, 7, 0.05),  # top-p below the top token's mass: keep at least one
    (32000, 64, 4, torch.float32, False, 50, 0.8),
]


@pytest.mark.parametrize(("vocab", "rank", "steps", "dtype", "sample", "top_k", "top_p"), TOP_CASES)
def test_kernel_top_k_top_p_match_transformers_warpers(vocab, rank, steps, dtype, sample, top_k, top_p):
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    args = random_round(vocab, rank, steps, dtype, sample, seed)
    _, q = assert_same(args, top_k=top_k, top_p=top_p)
    kept = q.isfinite().sum(-1)
    assert (kept >= 1).all() and (kept <= top_k).all(), seed
    if top_p is None:
        assert (kept == top_k).all(), seed  # random logits have no ties at the k-th value


def test_top_k_merges_a_slice_sorted_in_chunks(monkeypatch):
    """The GPU sorts a CTA's slice in register-sized chunks and merges their top keys; force that here."""
    monkeypatch.setitem(mk.TOP_K_CHUNK, "interpreter", 512)
    monkeypatch.setitem(mk.TOP_K_CHUNK, "cuda", 512)
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    args = random_round(8192, 16, 3, torch.float32, True, seed)  # 16 chunks per position
    _, q = assert_same(args, top_k=50, top_p=0.95)
    assert (q.isfinite().sum(-1) <= 50).all(), seed


def test_top_k_keeps_every_tie_of_the_kth_value():
    args = random_round(4096, 16, 3, torch.float32, True, seed=5)
    args["w1"].zero_()
    args["base_logits"][:, [10, 700, 1500]] = 40.0  # three tokens tie for first place: top_k=2 keeps all three
    _, q = assert_same(args, top_k=2)
    assert (q.isfinite().sum(-1) == 3).all()


def test_ties_past_the_candidate_list_fall_back_to_the_loop():
    args = random_round(4096, 16, 3, torch.float32, True, seed=5)
    args["w1"].zero_()
    args["base_logits"][:, [10, 700, 1500, 3000, 3500]] = 40.0  # five-way tie; top_k=2 keeps a list of 4
    tokens, *_ = mk.markov_draft_triton(**args, top_k=2)
    assert (tokens == -1).any()  # flagged, not silently truncated
    warpers = LogitsProcessorList([TopKLogitsWarper(2)])
    prefix_ids = args["anchor"].view(1, 1)
    ref = mk.markov_draft_reference(**args, logits_processor=warpers, prefix_ids=prefix_ids)
    fused = mk.markov_draft(**args, logits_processor=warpers, prefix_ids=prefix_ids, backend="triton")
    assert torch.equal(fused[0], ref[0]) and torch.equal(fused[1], ref[1])
    assert (ref[1].isfinite().sum(-1) == 5).all()


def test_fused_sampling_accepts_only_what_the_kernel_reproduces():
    temp, top_k, top_p = TemperatureLogitsWarper(0.7), TopKLogitsWarper(50), TopPLogitsWarper(0.9)
    assert mk.fused_sampling(None) == {}
    assert mk.fused_sampling([temp, top_k, top_p]) == {"temperature": 0.7, "top_k": 50, "top_p": 0.9, "min_keep": 1}
    assert mk.fused_sampling([top_k]) == {"top_k": 50}
    assert mk.fused_sampling([top_p]) is None  # top-p alone has no bound on the candidates
    assert mk.fused_sampling([TopKLogitsWarper(mk.MAX_FUSED_TOP_K + 1)]) is None
    assert mk.fused_sampling([top_k, temp]) is None  # another order means another distribution
    assert mk.fused_sampling([temp, RepetitionPenaltyLogitsProcessor(1.2)]) is None
    assert mk.fused_sampling([TopKLogitsWarper(5, filter_value=-1e4)]) is None


def test_ties_break_to_the_lowest_index():
    args = random_round(4096, 16, 4, torch.float32, False, seed=3)
    args["w1"].zero_()  # no bias: the base logits decide alone
    args["base_logits"][:, [100, 2000, 4000]] = 50.0  # three equal maxima at every position
    tokens, _ = assert_same(args)
    assert tokens.tolist() == [100] * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="several CTAs need a GPU (the interpreter runs one)")
@pytest.mark.parametrize("num_ctas", [1, 3, 17, 64])
def test_grid_barrier_with_many_ctas(num_ctas):
    for sample in (False, True):
        args = random_round(49152, 64, 8, torch.bfloat16, sample, seed=num_ctas)
        assert_same(args, num_ctas=num_ctas)
        assert_same(args, top_k=50, top_p=0.9, num_ctas=num_ctas)


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


def restrict(args: dict, vocab_ids: torch.Tensor) -> dict:
    """The same round over a draft vocabulary: its columns of the base logits and uniforms, its rows of W2 (W1 stays
    whole: it is indexed by the previous token's id)."""
    out = dict(args, base_logits=args["base_logits"][:, vocab_ids], vocab_ids=vocab_ids)
    if args["w2"] is not None:
        out["w2"] = args["w2"][vocab_ids]
    if args["uniforms"] is not None:
        out["uniforms"] = args["uniforms"][:, vocab_ids]
    return out


def random_vocab(vocab: int, size: int, seed: int) -> torch.Tensor:
    return torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))[:size].sort().values.to(DEVICE)


DRAFT_VOCAB_CASES = [  # (vocab, rank, steps, dtype, sample, top_k, draft vocabulary size)
    (49152, 64, 7, torch.float32, False, None, 8192),
    (49152, 128, 6, torch.bfloat16, True, None, 4000),
    (32000, 0, 5, torch.float32, True, 50, 3000),
    (49152, 64, 4, torch.float32, True, 20, 1000),
]


@pytest.mark.parametrize(("vocab", "rank", "steps", "dtype", "sample", "top_k", "size"), DRAFT_VOCAB_CASES)
def test_kernel_matches_reference_over_a_draft_vocabulary(vocab, rank, steps, dtype, sample, top_k, size):
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    ids = random_vocab(vocab, size, seed)
    tokens, q = assert_same(restrict(random_round(vocab, rank, steps, dtype, sample, seed), ids), top_k=top_k)
    assert q.shape == (steps, size)
    assert torch.isin(tokens, ids).all(), seed  # token ids, not slots of the draft vocabulary


@pytest.mark.parametrize("sample", [False, True])
def test_a_draft_vocabulary_rules_out_every_other_token(sample):
    """A round over `vocab_ids` is the whole-vocabulary round with every other token's base logit at -inf: the same
    tokens (fed back to W1 by id), confidences and logits."""
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    args = random_round(4096, 16, 6, torch.float32, sample, seed)
    ids = random_vocab(4096, 700, seed)
    outside = torch.ones(4096, dtype=torch.bool, device=DEVICE)
    outside[ids] = False
    whole = dict(args, base_logits=args["base_logits"].masked_fill(outside, -float("inf")))
    ref_tokens, ref_q, ref_conf, ref_prefix = mk.markov_draft_reference(**whole)
    tokens, q, conf, prefix = mk.markov_draft_reference(**restrict(args, ids))
    assert torch.equal(tokens, ref_tokens), seed
    assert ref_q[:, outside].isinf().all()
    torch.testing.assert_close(q, ref_q[:, ids])
    torch.testing.assert_close(conf, ref_conf)
    torch.testing.assert_close(prefix, ref_prefix)


def test_a_draft_vocabulary_refuses_processors_that_index_the_whole_vocabulary():
    args = restrict(random_round(512, 8, 3, torch.float32, False, seed=3), random_vocab(512, 100, 3))
    penalty = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.3)])
    with pytest.raises(ValueError, match="draft vocabulary"):
        mk.markov_draft(**args, logits_processor=penalty, prefix_ids=args["anchor"].view(1, 1))


def test_without_triton_cuda_tensors_take_the_pytorch_loop(monkeypatch):
    """A CPU install goes without Triton (it is not a dependency): the dispatcher then picks the reference loop."""
    monkeypatch.setattr(mk, "triton", None)
    assert mk.resolve_backend(torch.device("cuda")) == "torch"
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        mk.markov_draft_triton(**random_round(64, 8, 4, torch.float32, False, seed=0))
