"""The sequential part of a DSpark round — Markov bias, token choice, confidence — as one fused Triton launch, with
the PyTorch loop it must match.

For k = 0..n-1 (x_{-1} is the anchor):
    z_k   = (base_k + W2 · W1[x_{k-1}]) / T, then top-k / top-p (-inf outside; any other processor: reference only)
    x_k   = argmax(z_k)          greedy
          = argmax(z_k + g_k)    sampling, g_k = -log(-log(u_k)) Gumbel noise from pre-drawn uniforms u_k
    c_k   = sigmoid((w · [h_k ; W1[x_{k-1}]] + b) / τ_k),   a_k = c_0 · ... · c_k (prefix survival)
Gumbel-max with pre-drawn uniforms samples exactly from softmax(z_k) and makes both paths draw the same token.
With a draft vocabulary (`vocab_ids`) the logits span only those tokens; x_k is mapped back to its token id.

In eager PyTorch this is ~5 small launches per position; the kernel does all n positions in one launch. Its CTAs
split the vocabulary, and a grid-wide barrier (an atomic counter that only ever grows) hands each position's token to
the next. All CTAs must be resident at once, so the grid never exceeds the SM count. For top-k each CTA keeps its
slice's k best (value, index) pairs as sortable int64 keys; after the barrier every CTA merges all of them the same
way, applies top-k and top-p to that short list and draws the token, then masks its own slice of q.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import env
from .cpu_linears import linear

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs run the PyTorch reference
    triton = None

BACKEND_ENV = env.KERNEL


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
    vocab_ids: torch.Tensor | None = None,
    stop: Callable[[list[float]], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch loop. base_logits (n, V); hidden (n, d); anchor (1,); w1, w2 (V, r) or None (Markov head off);
    conf_weight (d + r,); conf_bias (1,); conf_temps (>= n,) or None. Greedy when `uniforms` is None.

    Returns tokens (n,), the processed logits each token was chosen from (n, V, float32), confidences (n,) and the
    prefix survival probabilities a_k = c_0 ... c_k (n,). `logits_processor` (Transformers' list, called with the
    growing `prefix_ids`) is applied after the temperature; the kernel applies only the warpers `fused_sampling`
    accepts.

    With a draft vocabulary `vocab_ids` (V' sorted token ids), base_logits, w2 and uniforms span those V' tokens and
    so does the returned q; w1 stays (vocab, r), since it is indexed by the previous token's id, and tokens are
    token ids. Only vocabulary-agnostic processors (the warpers) may be given then.

    `stop`, called after each position with the prefix survivals so far, ends the block there when it returns True:
    a policy that has settled how many drafts it verifies needs no later ones (the outputs are then shorter than n)."""
    d = hidden.shape[-1]
    # float32 views of the weights, made once per round rather than once per position
    w2 = w2.float() if w2 is not None else None
    conf_hidden, conf_markov = conf_weight[:d].float(), conf_weight[d:].float()
    bias = conf_bias.float()[0]
    previous = anchor.view(1)
    tokens, q_logits, confidences, prefix = [], [], [], []
    survival = torch.ones((), device=base_logits.device)
    for k in range(base_logits.shape[0]):
        logits = base_logits[k : k + 1].float()
        w1_row = None
        if w1 is not None:
            w1_row = w1[previous].float()  # (1, r)
            logits = logits + linear(w1_row, w2)  # w1_row @ w2.T
        if temperature is not None:
            logits = logits / temperature
        if logits_processor:
            logits = logits_processor(prefix_ids, logits)
        scores = logits if uniforms is None else logits + gumbel(uniforms[k : k + 1])
        token = scores.argmax(dim=-1)
        if vocab_ids is not None:
            token = vocab_ids[token]
        conf_logit = hidden[k].float() @ conf_hidden + bias
        if w1_row is not None:
            conf_logit = conf_logit + w1_row[0] @ conf_markov
        if conf_temps is not None:
            conf_logit = conf_logit / conf_temps[k]
        confidence = torch.sigmoid(conf_logit)
        survival = survival * confidence
        confidences.append(confidence.view(1))
        prefix.append(survival.view(1))
        tokens.append(token)
        q_logits.append(logits)
        if logits_processor and prefix_ids is not None:  # (the warpers alone do not read it)
            prefix_ids = torch.cat([prefix_ids, token.view(1, 1).to(prefix_ids.dtype)], dim=-1)
        previous = token
        if stop is not None and k + 1 < base_logits.shape[0] and stop(torch.cat(prefix).tolist()):
            break
    return torch.cat(tokens), torch.cat(q_logits), torch.cat(confidences), torch.cat(prefix)


if triton is not None:

    @triton.jit
    def _order_key(z, idx):
        """int64 keys whose order is (value descending, index ascending): one sort ranks values and breaks ties."""
        bits = z.to(tl.int32, bitcast=True)
        ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # float order as signed-integer order
        return (ordered.to(tl.int64) << 32) | (4294967295 - idx.to(tl.int64))

    @triton.jit
    def _key_value(key):
        hi = (key >> 32).to(tl.int32)
        return (hi ^ ((hi >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)

    @triton.jit
    def _indicator(n_dims: tl.constexpr, dim: tl.constexpr):
        """0 on the left, 1 on the right of hypercube dimension `dim` (counted from the innermost)."""
        return tl.reshape(tl.arange(0, 2), [1] * (n_dims - dim - 1) + [2] + [1] * dim)

    @triton.jit
    def _compare_and_swap(h, flip, n_dims: tl.constexpr, dim: tl.constexpr):
        """Smaller of each pair along hypercube dimension `dim` to the left, larger to the right (reversed where
        `flip` is 1)."""
        low = tl.min(h, axis=n_dims - 1 - dim, keep_dims=True)
        high = tl.max(h, axis=n_dims - 1 - dim, keep_dims=True)
        return tl.where((flip ^ _indicator(n_dims, dim)) != 0, high, low)

    @triton.jit
    def _bitonic_sort(x, LOG_N: tl.constexpr, DESCENDING: tl.constexpr):
        """Bitonic sort of a 1-D block of 2**LOG_N elements. Triton's `tl.sort` exchanges partners with an XOR
        reduction, which the CPU interpreter runs element by element in Python (minutes per tile); pairwise min / max
        on the hypercube does the same exchange and runs as vectorized numpy there."""
        h = tl.reshape(x, [2] * LOG_N)
        for stage in tl.static_range(1, LOG_N + 1):
            if stage < LOG_N:
                flip = _indicator(LOG_N, stage)  # alternate directions: pairs of runs form bitonic sequences
            else:
                flip = tl.full([1] * LOG_N, DESCENDING, tl.int32)
            for i in tl.static_range(stage):
                h = _compare_and_swap(h, flip, LOG_N, stage - 1 - i)
        return tl.reshape(h, x.shape)

    @triton.jit
    def _sort(x, LOG_N: tl.constexpr, DESCENDING: tl.constexpr, VECTOR_SORT: tl.constexpr):
        """`tl.sort` on the GPU; on the CPU interpreter the min / max bitonic sort, which sorts the same way."""
        if VECTOR_SORT:
            y = _bitonic_sort(x, LOG_N, DESCENDING)
        else:
            y = tl.sort(x, descending=DESCENDING)
        return y

    @triton.jit
    def _top(x, LOG_N: tl.constexpr, LOG_K: tl.constexpr, VECTOR_SORT: tl.constexpr):
        """The 2**LOG_K largest of 2**LOG_N keys, descending. On the GPU `tl.topk`: a bitonic top-k that stops
        sorting below 2**LOG_K (a fraction of a full sort's exchanges); on the interpreter the first row of a
        descending sort."""
        if VECTOR_SORT:
            y = tl.max(tl.reshape(_bitonic_sort(x, LOG_N, True), (2 ** (LOG_N - LOG_K), 2**LOG_K)), axis=0)
        else:
            y = tl.topk(x, 2**LOG_K)
        return y

    @triton.jit
    def _markov_draft_kernel(
        base_ptr, hidden_ptr, anchor_ptr, w1_ptr, w2_ptr, cw_ptr, cb_ptr, temps_ptr, uniforms_ptr, ids_ptr,
        q_ptr, tokens_ptr, conf_ptr, prefix_ptr, part_val_ptr, part_idx_ptr, part_key_ptr, barrier_ptr, barrier_base,
        n_steps, V, R, D, temperature, top_k, top_p_floor, min_keep, vocab_per_cta,
        SAMPLE: tl.constexpr, HAS_MARKOV: tl.constexpr, HAS_TEMPS: tl.constexpr, HAS_IDS: tl.constexpr,
        TOP_K: tl.constexpr,
        TOP_P: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr, LOG_K: tl.constexpr,
        LOG_S: tl.constexpr, LOG_PK: tl.constexpr, VECTOR_SORT: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        start = pid * vocab_per_cta
        stop = tl.minimum(start + vocab_per_cta, V)
        offs_r = tl.arange(0, BLOCK_R)
        mask_r = offs_r < R
        offs_k = tl.arange(0, BLOCK_K)
        no_key = -9223372036854775807 - 1
        previous = tl.load(anchor_ptr).to(tl.int64)
        survival = 1.0
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
                if not TOP_K:
                    if SAMPLE:
                        u = tl.load(uniforms_ptr + k * V + offs_v, mask=mask_v, other=0.5).to(tl.float32)
                        z = z - tl.log(-tl.log(tl.maximum(u, 1e-20)))
                    z = tl.where(mask_v, z, -float("inf"))
                    tile_val = tl.max(z, axis=0)
                    tile_idx = tl.argmax(z, axis=0) + v0
                    better = tile_val > best_val  # strict: on ties the earlier (lower) index stays
                    best_idx = tl.where(better, tile_idx, best_idx)
                    best_val = tl.where(better, tile_val, best_val)
            if TOP_K:
                # the slice's BLOCK_K largest keys, from its logits (just written to q) in chunks of BLOCK_S: the
                # elementwise max of an ascending run (the slice so far) and a descending one (the chunk's top)
                # holds the BLOCK_K largest of both
                tl.debug_barrier()
                slice_keys = tl.full([BLOCK_K], no_key, tl.int64)
                for s0 in range(start, stop, BLOCK_S):
                    offs_s = s0 + tl.arange(0, BLOCK_S)
                    mask_s = offs_s < stop
                    z_chunk = tl.load(q_ptr + k * V + offs_s, mask=mask_s, other=0.0)
                    chunk_top = _top(tl.where(mask_s, _order_key(z_chunk, offs_s), no_key), LOG_S, LOG_K, VECTOR_SORT)
                    slice_keys = _sort(tl.maximum(slice_keys, chunk_top), LOG_K, False, VECTOR_SORT)
                tl.store(part_key_ptr + (k * nprog + pid) * BLOCK_K + offs_k, slice_keys)
            else:
                tl.store(part_val_ptr + k * nprog + pid, best_val)
                tl.store(part_idx_ptr + k * nprog + pid, best_idx.to(tl.int32))
            # grid-wide barrier: every CTA has published its slice's candidates for position k
            tl.debug_barrier()
            tl.atomic_add(barrier_ptr, 1, sem="release")
            target = barrier_base + (k + 1) * nprog
            arrived = tl.atomic_add(barrier_ptr, 0, sem="acquire")
            while arrived < target:
                arrived = tl.atomic_add(barrier_ptr, 0, sem="acquire")
            tl.debug_barrier()
            if TOP_K:
                # every CTA merges all slices' candidates the same way, so all agree on the kept set and the token
                offs_pk = tl.arange(0, BLOCK_P * BLOCK_K)
                keys = tl.load(
                    part_key_ptr + k * nprog * BLOCK_K + offs_pk,
                    mask=offs_pk < nprog * BLOCK_K, other=no_key, volatile=True,
                )  # fmt: skip
                keys = _top(keys, LOG_PK, LOG_K, VECTOR_SORT)
                vals = tl.where(keys != no_key, _key_value(keys), -float("inf"))
                idxs = (4294967295 - (keys & 4294967295)).to(tl.int32)
                kth = tl.max(tl.where(offs_k == top_k - 1, vals, -float("inf")), axis=0)
                keep = (keys != no_key) & (vals >= kth)  # Transformers keeps every tie of the k-th value
                # the list holds more than k keys; if even the last one ties the k-th value, ties may run past it
                overflow = tl.max(tl.where(offs_k == BLOCK_K - 1, vals, -float("inf")), axis=0) == kth
                if TOP_P:
                    probs = tl.where(keep, tl.exp(vals - tl.max(vals, axis=0)), 0.0)
                    probs = probs / tl.sum(probs, axis=0)
                    # mass of this token and all smaller ones: Transformers' ascending cumulative sum
                    tail = tl.cumsum(probs, axis=0, reverse=True)
                    keep = keep & ((tail > top_p_floor) | (offs_k < min_keep))
                cutoff = tl.min(tl.where(keep, keys, 9223372036854775807), axis=0)
                scores = vals
                if SAMPLE:
                    u = tl.load(uniforms_ptr + k * V + idxs, mask=keep, other=0.5).to(tl.float32)
                    scores = vals - tl.log(-tl.log(tl.maximum(u, 1e-20)))
                scores = tl.where(keep, scores, -float("inf"))
                top = tl.max(scores, axis=0)
                token = tl.min(tl.where(keep & (scores == top), idxs, 2147483647), axis=0).to(tl.int64)
                for v0 in range(start, stop, BLOCK_V):  # filtered tokens get -inf in q, as the warpers write
                    offs_v = v0 + tl.arange(0, BLOCK_V)
                    mask_v = offs_v < stop
                    z = tl.load(q_ptr + k * V + offs_v, mask=mask_v, other=0.0)
                    dropped = mask_v & (_order_key(z, offs_v) < cutoff)
                    tl.store(q_ptr + k * V + offs_v, tl.full([BLOCK_V], -float("inf"), tl.float32), mask=dropped)
            else:
                offs_p = tl.arange(0, BLOCK_P)
                mask_p = offs_p < nprog
                vals = tl.load(part_val_ptr + k * nprog + offs_p, mask=mask_p, other=-float("inf"), volatile=True)
                idxs = tl.load(part_idx_ptr + k * nprog + offs_p, mask=mask_p, other=0, volatile=True)
                top = tl.max(vals, axis=0)
                # lowest vocabulary index among the maxima (CTAs own ascending slices)
                token = tl.min(tl.where(vals == top, idxs, 2147483647), axis=0).to(tl.int64)
            if HAS_IDS:  # a draft vocabulary: the chosen slot's token id (W1 and the output are indexed by ids)
                token = tl.load(ids_ptr + token).to(tl.int64)
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
                confidence = tl.sigmoid(logit)
                survival = survival * confidence
                tl.store(conf_ptr + k, confidence)
                tl.store(prefix_ptr + k, survival)
                if TOP_K:
                    tl.store(tokens_ptr + k, tl.where(overflow, -1, token))  # -1: run this round on the loop
                else:
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


def _num_ctas(device: torch.device, vocab: int, block_v: int, cap: int | None = None) -> int:
    if device.type != "cuda":
        return 1  # the interpreter runs programs one after another: a grid barrier needs a single program
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(sms, cap or sms, triton.cdiv(vocab, block_v * 2)))


MAX_FUSED_TOP_K = 128  # candidates each CTA keeps per position; larger top-k runs the PyTorch loop
# top-k sorts each CTA's slice in chunks of this many keys: register-sized on the GPU, whole slices in the interpreter
TOP_K_CHUNK = {"cuda": 4096, "interpreter": 2**18}


def fused_sampling(logits_processor) -> dict | None:
    """The settings the kernel applies itself, or None when `logits_processor` holds anything it cannot.

    The kernel reproduces Transformers' sampling warpers in their own order — temperature, then top-k (k up to
    MAX_FUSED_TOP_K), then top-p (only after a top-k, which bounds the candidates) — with filter value -inf. Any other
    list runs the PyTorch loop, which calls the processors themselves."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rest = list(logits_processor or [])
    settings: dict = {}
    for cls, name in (
        (TemperatureLogitsWarper, "temperature"),
        (TopKLogitsWarper, "top_k"),
        (TopPLogitsWarper, "top_p"),
    ):
        if rest and type(rest[0]) is cls:
            warper = rest.pop(0)
            if getattr(warper, "filter_value", -float("inf")) != -float("inf"):
                return None
            settings[name] = getattr(warper, name)
            if name == "top_p":
                settings["min_keep"] = warper.min_tokens_to_keep
    top_k = settings.get("top_k")
    if rest or (top_k is not None and top_k > MAX_FUSED_TOP_K) or ("top_p" in settings and top_k is None):
        return None
    return settings


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
    top_k: int | None = None,
    top_p: float | None = None,
    min_keep: int = 1,
    num_ctas: int | None = None,
    vocab_ids: torch.Tensor | None = None,
    barrier: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused kernel: `markov_draft_reference` with the processors given as settings (see `fused_sampling`).

    With top-k, a token of -1 means ties of the k-th value ran past the candidate list at that position; the
    dispatcher `markov_draft` then runs the round on the PyTorch loop. `barrier` (an int32 counter of one element)
    replaces the shared, ever-growing grid-barrier counter by one zeroed before the launch: a CUDA graph replays its
    launches with the arguments they were captured with, so the counter must start from the same value each time."""
    if triton is None:
        raise RuntimeError("Triton is not installed; use backend='torch'")
    n, vocab = base_logits.shape
    device = base_logits.device
    rank = 0 if w1 is None else w1.shape[1]
    if top_k is not None and not 1 <= top_k <= MAX_FUSED_TOP_K:
        raise ValueError(f"the fused kernel takes 1 <= top_k <= {MAX_FUSED_TOP_K}, got {top_k}")
    if top_p is not None and top_k is None:
        raise ValueError("the fused kernel applies top_p only after a top_k; use the PyTorch loop")
    # one slot more than k: a tie of the k-th value in the last slot flags that ties may run past the list
    block_k = triton.next_power_of_2(min(top_k, vocab) + 1) if top_k else 1
    block_r = triton.next_power_of_2(max(rank, 1))
    if device.type == "cuda":  # register-sized tiles
        block_v = max(16, min(1024, 8192 // block_r)) if rank else 1024
    else:  # the interpreter runs each tile as numpy: fewer, larger tiles are much faster
        block_v = min(triton.next_power_of_2(vocab), max(1024, 2**20 // block_r))
    # with top-k every CTA sorts all CTAs' candidates, so fewer, longer slices pay off
    ctas = num_ctas or _num_ctas(device, vocab, block_v, 16 if top_k else None)
    per_cta = triton.cdiv(triton.cdiv(vocab, ctas), block_v) * block_v
    ctas = triton.cdiv(vocab, per_cta)
    q = torch.empty(n, vocab, dtype=torch.float32, device=device)
    tokens = torch.empty(n, dtype=torch.int64, device=device)
    confidences = torch.empty(n, dtype=torch.float32, device=device)
    prefix = torch.empty(n, dtype=torch.float32, device=device)
    part_val = torch.empty(n, ctas, dtype=torch.float32, device=device)
    part_idx = torch.empty(n, ctas, dtype=torch.int32, device=device)
    part_key = torch.empty(n, ctas, block_k if top_k else 1, dtype=torch.int64, device=device)
    block_p = triton.next_power_of_2(ctas)
    chunk = TOP_K_CHUNK["cuda" if device.type == "cuda" else "interpreter"]
    block_s = max(block_k, min(triton.next_power_of_2(per_cta), chunk))
    block_s = block_s if top_k else 1
    if barrier is None:
        counter, base = _barrier(device, n * ctas)
    else:
        counter, base = barrier.zero_(), 0
    dummy = q
    _markov_draft_kernel[(ctas,)](
        base_logits.contiguous(), hidden.contiguous(), anchor, w1 if w1 is not None else dummy,
        w2 if w2 is not None else dummy, conf_weight, conf_bias, conf_temps if conf_temps is not None else dummy,
        uniforms.contiguous() if uniforms is not None else dummy, vocab_ids if vocab_ids is not None else dummy,
        q, tokens, confidences, prefix, part_val, part_idx, part_key, counter, base,
        n, vocab, rank, hidden.shape[-1], float(temperature or 1.0), min(top_k or 1, vocab),
        1.0 - (top_p or 0.0), min_keep, per_cta,
        SAMPLE=uniforms is not None, HAS_MARKOV=rank > 0, HAS_TEMPS=conf_temps is not None,
        HAS_IDS=vocab_ids is not None, TOP_K=bool(top_k),
        TOP_P=top_p is not None, BLOCK_V=block_v, BLOCK_R=block_r, BLOCK_D=1024,
        BLOCK_P=block_p, BLOCK_K=block_k, BLOCK_S=block_s, LOG_K=block_k.bit_length() - 1,
        LOG_S=block_s.bit_length() - 1,
        LOG_PK=(block_p * block_k).bit_length() - 1, VECTOR_SORT=device.type != "cuda",
        num_warps=8,
    )  # fmt: skip
    if barrier is None:
        _barrier_advance(device, n * ctas)
    return tokens, q, confidences, prefix


def resolve_backend(device: torch.device, backend: str | None = None) -> str:
    """'triton' for CUDA tensors when Triton is installed, else 'torch'; `backend` or $DSPARK_KERNEL forces one."""
    choice = (backend or env.kernel_choice()).lower()
    if choice not in ("auto", "triton", "torch"):
        raise ValueError(f"{BACKEND_ENV} / backend must be 'auto', 'triton' or 'torch', got {choice!r}")
    if choice == "auto":
        return "triton" if triton is not None and device.type == "cuda" else "torch"
    return choice


def markov_draft(
    base_logits: torch.Tensor,
    *args,
    backend: str | None = None,
    logits_processor=None,
    prefix_ids=None,
    barrier: torch.Tensor | None = None,
    stop: Callable[[list[float]], bool] | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dispatch: the fused kernel on CUDA (see `resolve_backend`) when it can apply `logits_processor` itself (see
    `fused_sampling`); otherwise the PyTorch loop, which calls the processors. Only the loop stops early (`stop`):
    the kernel drafts the whole block, which verification then cuts just the same.

    With `barrier` (see `markov_draft_triton`; for CUDA-graph capture) the kernel must run, and a top-k round whose
    ties overflowed is not rerun here, which would need a host sync: the caller finds its tokens of -1 and reruns."""
    settings = fused_sampling(logits_processor)
    if settings is None and kwargs.get("vocab_ids") is not None:
        raise ValueError(
            "a draft vocabulary works with greedy decoding and the temperature / top-k / top-p warpers only; other "
            "logits processors index the whole vocabulary: draft from it (vocab_ids=None)"
        )
    if barrier is not None:
        if settings is None or resolve_backend(base_logits.device, backend) != "triton":
            raise ValueError("a barrier counter is only for the fused kernel (CUDA, Triton, fusable processors)")
        return markov_draft_triton(base_logits, *args, **kwargs, **settings, barrier=barrier)
    if settings is not None and resolve_backend(base_logits.device, backend) == "triton":
        drafted = markov_draft_triton(base_logits, *args, **kwargs, **settings)
        if "top_k" not in settings or not bool((drafted[0] < 0).any()):
            return drafted
        # ties of the k-th value ran past the kernel's candidate list: the loop keeps every one of them
    return markov_draft_reference(
        base_logits, *args, logits_processor=logits_processor, prefix_ids=prefix_ids, stop=stop, **kwargs
    )
