"""The sequential part of a DSpark round — Markov bias, token choice, confidence — as one fused Triton launch, with
the PyTorch loop it must match.

For k = 0..n-1 (x_{-1} is the anchor):
    z_k   = (base_k + W2 · W1[x_{k-1}]) / T          (then any further logits processors, reference path only)
    x_k   = argmax(z_k)          greedy
          = argmax(z_k + g_k)    sampling, g_k = -log(-log(u_k)) Gumbel noise from pre-drawn uniforms u_k
    c_k   = sigmoid((w · [h_k ; W1[x_{k-1}]] + b) / τ_k)
Gumbel-max with pre-drawn uniforms samples exactly from softmax(z_k) and makes both paths draw the same token.

In eager PyTorch this is ~5 small launches per position; the kernel does all n positions in one launch. Its CTAs
split the vocabulary, and a grid-wide barrier (an atomic counter that only ever grows) hands each position's token to
the next. All CTAs must be resident at once, so the grid never exceeds the SM count.

Self-contained on purpose: this file travels with every checkpoint as Hub remote code.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs run the PyTorch reference
    triton = None

BACKEND_ENV = "DSPARK_KERNEL"  # "auto" (default), "triton" or "torch"


def gumbel(uniforms: torch.Tensor) -> torch.Tensor:
    return -torch.log(-torch.log(uniforms.float().clamp_min(1e-20)))


def markov_draft_reference(
    base_logits: torch.Tensor,
    hidden: torch.Tensor,
    anchor: torch.Tensor,
    w1: torch.Tensor | None,
    w2: torch.Tensor | None,
    conf_weight: torch.Tensor,
    conf_bias: torch.Tensor,
    conf_temps: torch.Tensor | None = None,
    temperature: float | None = None,
    uniforms: torch.Tensor | None = None,
    logits_processor=None,
    prefix_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch loop. base_logits (n, V); hidden (n, d); anchor (1,); w1, w2 (V, r) or None (Markov head off);
    conf_weight (d + r,); conf_bias (1,); conf_temps (>= n,) or None. Greedy when `uniforms` is None.

    Returns tokens (n,), the processed logits each token was chosen from (n, V, float32) and confidences (n,).
    `logits_processor` (Transformers' list, called with the growing `prefix_ids`) is applied after the temperature;
    the Triton kernel has no such hook."""
    d = hidden.shape[-1]
    # float32 views of the weights, made once per round rather than once per position
    w2_t = w2.float().T if w2 is not None else None
    conf_hidden, conf_markov = conf_weight[:d].float(), conf_weight[d:].float()
    bias = conf_bias.float()[0]
    previous = anchor.view(1)
    tokens, q_logits, confidences = [], [], []
    for k in range(base_logits.shape[0]):
        logits = base_logits[k : k + 1].float()
        w1_row = None
        if w1 is not None:
            w1_row = w1[previous].float()  # (1, r)
            logits = logits + w1_row @ w2_t
        if temperature is not None:
            logits = logits / temperature
        if logits_processor:
            logits = logits_processor(prefix_ids, logits)
        scores = logits if uniforms is None else logits + gumbel(uniforms[k : k + 1])
        token = scores.argmax(dim=-1)
        conf_logit = hidden[k].float() @ conf_hidden + bias
        if w1_row is not None:
            conf_logit = conf_logit + w1_row[0] @ conf_markov
        if conf_temps is not None:
            conf_logit = conf_logit / conf_temps[k]
        confidences.append(torch.sigmoid(conf_logit).view(1))
        tokens.append(token)
        q_logits.append(logits)
        if logits_processor:
            prefix_ids = torch.cat([prefix_ids, token.view(1, 1).to(prefix_ids.dtype)], dim=-1)
        previous = token
    return torch.cat(tokens), torch.cat(q_logits), torch.cat(confidences)


if triton is not None:

    @triton.jit
    def _markov_draft_kernel(
        base_ptr, hidden_ptr, anchor_ptr, w1_ptr, w2_ptr, cw_ptr, cb_ptr, temps_ptr, uniforms_ptr,
        q_ptr, tokens_ptr, conf_ptr, part_val_ptr, part_idx_ptr, barrier_ptr, barrier_base,
        n_steps, V, R, D, temperature, vocab_per_cta,
        SAMPLE: tl.constexpr, HAS_MARKOV: tl.constexpr, HAS_TEMPS: tl.constexpr,
        BLOCK_V: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        start = pid * vocab_per_cta
        stop = tl.minimum(start + vocab_per_cta, V)
        offs_r = tl.arange(0, BLOCK_R)
        mask_r = offs_r < R
        previous = tl.load(anchor_ptr).to(tl.int64)
        for k in range(n_steps):
            if HAS_MARKOV:
                w1_row = tl.load(w1_ptr + previous * R + offs_r, mask=mask_r, other=0.0).to(tl.float32)
            best_val = -float("inf")
            best_idx = 0
            for v0 in range(start, stop, BLOCK_V):
                offs_v = v0 + tl.arange(0, BLOCK_V)
                mask_v = offs_v < stop
                z = tl.load(base_ptr + k * V + offs_v, mask=mask_v, other=0.0).to(tl.float32)
                if HAS_MARKOV:
                    w2_tile = w2_ptr + offs_v[:, None] * R + offs_r[None, :]
                    w2 = tl.load(w2_tile, mask=mask_v[:, None] & mask_r[None, :], other=0.0).to(tl.float32)
                    z += tl.sum(w2 * w1_row[None, :], axis=1)
                z = z / temperature
                tl.store(q_ptr + k * V + offs_v, z, mask=mask_v)
                if SAMPLE:
                    u = tl.load(uniforms_ptr + k * V + offs_v, mask=mask_v, other=0.5).to(tl.float32)
                    z = z - tl.log(-tl.log(tl.maximum(u, 1e-20)))
                z = tl.where(mask_v, z, -float("inf"))
                tile_val = tl.max(z, axis=0)
                tile_idx = tl.argmax(z, axis=0) + v0
                better = tile_val > best_val  # strict: on ties the earlier (lower) index stays
                best_idx = tl.where(better, tile_idx, best_idx)
                best_val = tl.where(better, tile_val, best_val)
            tl.store(part_val_ptr + k * nprog + pid, best_val)
            tl.store(part_idx_ptr + k * nprog + pid, best_idx.to(tl.int32))
            # grid-wide barrier: every CTA has published its slice's best for position k
            tl.debug_barrier()
            tl.atomic_add(barrier_ptr, 1, sem="release")
            target = barrier_base + (k + 1) * nprog
            arrived = tl.atomic_add(barrier_ptr, 0, sem="acquire")
            while arrived < target:
                arrived = tl.atomic_add(barrier_ptr, 0, sem="acquire")
            tl.debug_barrier()
            offs_p = tl.arange(0, BLOCK_P)
            mask_p = offs_p < nprog
            vals = tl.load(part_val_ptr + k * nprog + offs_p, mask=mask_p, other=-float("inf"), volatile=True)
            idxs = tl.load(part_idx_ptr + k * nprog + offs_p, mask=mask_p, other=0, volatile=True)
            top = tl.max(vals, axis=0)
            # lowest vocabulary index among the maxima (CTAs own ascending slices)
            token = tl.min(tl.where(vals == top, idxs, 2147483647), axis=0).to(tl.int64)
            if pid == 0:
                acc = tl.zeros([BLOCK_D], dtype=tl.float32)
                for d0 in range(0, D, BLOCK_D):
                    offs_d = d0 + tl.arange(0, BLOCK_D)
                    mask_d = offs_d < D
                    h = tl.load(hidden_ptr + k * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
                    w = tl.load(cw_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
                    acc += h * w
                logit = tl.sum(acc, axis=0) + tl.load(cb_ptr).to(tl.float32)
                if HAS_MARKOV:
                    cw_r = tl.load(cw_ptr + D + offs_r, mask=mask_r, other=0.0).to(tl.float32)
                    logit += tl.sum(w1_row * cw_r, axis=0)
                if HAS_TEMPS:
                    logit = logit / tl.load(temps_ptr + k).to(tl.float32)
                tl.store(conf_ptr + k, tl.sigmoid(logit))
                tl.store(tokens_ptr + k, token)
            previous = token


_BARRIERS: dict[torch.device, list] = {}  # device -> [counter tensor, value it holds between launches]


def _barrier(device: torch.device, increments: int) -> tuple[torch.Tensor, int]:
    """A grid-barrier counter that persists across launches (no memset launch per round). Returns the counter and
    the value it holds now; call `_barrier_advance` only once the launch was enqueued, or the next launch would wait
    for arrivals that never come."""
    entry = _BARRIERS.get(device)
    if entry is None or entry[1] + increments > 2**30:
        entry = _BARRIERS[device] = [torch.zeros(1, dtype=torch.int32, device=device), 0]
    return entry[0], entry[1]


def _barrier_advance(device: torch.device, increments: int) -> None:
    _BARRIERS[device][1] += increments


def _num_ctas(device: torch.device, vocab: int, block_v: int) -> int:
    if device.type != "cuda":
        return 1  # the interpreter runs programs one after another: a grid barrier needs a single program
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(sms, triton.cdiv(vocab, block_v * 2)))


def markov_draft_triton(
    base_logits: torch.Tensor,
    hidden: torch.Tensor,
    anchor: torch.Tensor,
    w1: torch.Tensor | None,
    w2: torch.Tensor | None,
    conf_weight: torch.Tensor,
    conf_bias: torch.Tensor,
    conf_temps: torch.Tensor | None = None,
    temperature: float | None = None,
    uniforms: torch.Tensor | None = None,
    num_ctas: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused kernel; same contract as `markov_draft_reference` without logits processors."""
    if triton is None:
        raise RuntimeError("Triton is not installed; use backend='torch'")
    n, vocab = base_logits.shape
    device = base_logits.device
    rank = 0 if w1 is None else w1.shape[1]
    block_r = triton.next_power_of_2(max(rank, 1))
    if device.type == "cuda":  # register-sized tiles
        block_v = max(16, min(1024, 8192 // block_r)) if rank else 1024
    else:  # the interpreter runs each tile as numpy: fewer, larger tiles are much faster
        block_v = min(triton.next_power_of_2(vocab), max(1024, 2**20 // block_r))
    ctas = num_ctas or _num_ctas(device, vocab, block_v)
    per_cta = triton.cdiv(triton.cdiv(vocab, ctas), block_v) * block_v
    ctas = triton.cdiv(vocab, per_cta)
    q = torch.empty(n, vocab, dtype=torch.float32, device=device)
    tokens = torch.empty(n, dtype=torch.int64, device=device)
    confidences = torch.empty(n, dtype=torch.float32, device=device)
    part_val = torch.empty(n, ctas, dtype=torch.float32, device=device)
    part_idx = torch.empty(n, ctas, dtype=torch.int32, device=device)
    counter, base = _barrier(device, n * ctas)
    dummy = q
    _markov_draft_kernel[(ctas,)](
        base_logits.contiguous(), hidden.contiguous(), anchor, w1 if w1 is not None else dummy,
        w2 if w2 is not None else dummy, conf_weight, conf_bias, conf_temps if conf_temps is not None else dummy,
        uniforms.contiguous() if uniforms is not None else dummy,
        q, tokens, confidences, part_val, part_idx, counter, base,
        n, vocab, rank, hidden.shape[-1], float(temperature or 1.0), per_cta,
        SAMPLE=uniforms is not None, HAS_MARKOV=rank > 0, HAS_TEMPS=conf_temps is not None,
        BLOCK_V=block_v, BLOCK_R=block_r, BLOCK_D=1024, BLOCK_P=triton.next_power_of_2(ctas), num_warps=8,
    )  # fmt: skip
    _barrier_advance(device, n * ctas)
    return tokens, q, confidences


def resolve_backend(device: torch.device, backend: str | None = None) -> str:
    """'triton' for CUDA tensors when Triton is installed, else 'torch'; `backend` or $DSPARK_KERNEL forces one."""
    choice = (backend or os.environ.get(BACKEND_ENV, "auto")).lower()
    if choice not in ("auto", "triton", "torch"):
        raise ValueError(f"{BACKEND_ENV} / backend must be 'auto', 'triton' or 'torch', got {choice!r}")
    if choice == "auto":
        return "triton" if triton is not None and device.type == "cuda" else "torch"
    return choice


def markov_draft(
    base_logits: torch.Tensor, *args, backend: str | None = None, logits_processor=None, prefix_ids=None, **kwargs
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dispatch: the fused kernel on CUDA, the PyTorch loop elsewhere (see `resolve_backend`) and whenever logits
    processors other than the temperature must run (the kernel has no hook for arbitrary Python processors)."""
    if not logits_processor and resolve_backend(base_logits.device, backend) == "triton":
        return markov_draft_triton(base_logits, *args, **kwargs)
    return markov_draft_reference(
        base_logits, *args, logits_processor=logits_processor, prefix_ids=prefix_ids, **kwargs
    )
