"""DSpark drafter: context fusion, parallel bidirectional backbone, Markov head and confidence head.

One round of drafting reads like this (`decoding/round.py` runs it inside generation):

1. The target's hidden states at `config.target_layer_ids` for the newly verified positions are concatenated and
   fused (`fc` + RMSNorm). Every draft layer projects them to keys/values once; they stay in a `DSparkContextCache`.
2. A block of γ inputs — the anchor (the last token the target produced) followed by γ-1 learned mask embeddings —
   runs through the draft layers in one pass. Attention inside the block is bidirectional and the block attends to
   all cached context. The output at block position k predicts the token k+1 places after the anchor's position
   minus one, i.e. the anchor's output predicts the next token.
3. Base logits come from the target's own (frozen, shared) LM head. The Markov head adds `W2 · W1[x_{k-1}]`,
   left to right, so each position sees the token drafted just before it; the confidence head
   `c_k = sigmoid(w · [h_k ; W1[x_{k-1}]] + b)` estimates the chance that each draft survives verification. That
   sequential loop lives in `kernels/markov.py` (fused Triton kernel + PyTorch reference).

The drafter only: no decoding here. This file is also the Hub folder's modeling code (`dspark export-hub` writes it
with a small generate() routing appended, `hub_routing.py`), so it imports only torch, transformers and its config.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN

from .configuration_dspark import DSparkConfig, check_draft_vocab

FINGERPRINT_ROWS = 16
FINGERPRINT_DIMS = 4
FINGERPRINT_MIN_CORRELATION = 0.9


class DSparkRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(dtype)


class DSparkRotaryEmbedding(nn.Module):
    """Plain RoPE at absolute positions; the drafter's positions are the target's token positions.

    The frequencies are computed on first use per device, not kept in a buffer: `from_pretrained` builds the model on
    the meta device, and a non-persistent buffer made in `__init__` would come back as uninitialised memory."""

    def __init__(self, config: DSparkConfig):
        super().__init__()
        self.dim, self.base = config.head_dim, config.rope_theta
        self._inv_freq: torch.Tensor | None = None

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        if self._inv_freq is None or self._inv_freq.device != device:
            exponents = torch.arange(0, self.dim, 2, dtype=torch.float32, device=device) / self.dim
            self._inv_freq = 1.0 / (self.base**exponents)
        return self._inv_freq

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].to(torch.float32) * self.inv_freq(position_ids.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (batch, heads, seq, head_dim); cos/sin: (batch, seq, head_dim)."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


class DSparkContextCache:
    """Keys/values of the fused target features, per draft layer; append-only.

    Only verified positions are ever appended (the generator feeds the features of accepted tokens), so unlike the
    target's cache it never needs cropping. Storage grows by doubling to keep appends cheap, unless it was allocated
    up front (`DSparkDrafter.new_context_cache(capacity=...)`): then it never moves, which CUDA graphs need.
    """

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.length = 0

    @property
    def capacity(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def append(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor, positions: torch.Tensor | None = None):
        """key/value: (batch, kv_heads, new, head_dim), written from `length` on (call for every layer, then
        `advance(new)`), or at `positions` (a device tensor; the storage must hold them: nothing grows or syncs)."""
        if positions is not None:
            self.keys[layer_idx].index_copy_(2, positions, key)
            self.values[layer_idx].index_copy_(2, positions, value)
            return
        new = key.shape[2]
        stored = self.keys[layer_idx]
        if stored is None or stored.shape[2] < self.length + new:
            capacity = max(64, 2 * (self.length + new))
            grown_k = key.new_empty(*key.shape[:2], capacity, key.shape[3])
            grown_v = value.new_empty(*value.shape[:2], capacity, value.shape[3])
            if stored is not None:
                grown_k[:, :, : self.length] = stored[:, :, : self.length]
                grown_v[:, :, : self.length] = self.values[layer_idx][:, :, : self.length]
            self.keys[layer_idx], self.values[layer_idx] = grown_k, grown_v
        self.keys[layer_idx][:, :, self.length : self.length + new] = key
        self.values[layer_idx][:, :, self.length : self.length + new] = value

    def advance(self, new: int) -> None:
        self.length += new

    def get(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer_idx][:, :, : self.length], self.values[layer_idx][:, :, : self.length]


class DSparkAttention(nn.Module):
    """Block queries attend to [cached context keys ; block keys], bidirectionally (no causal mask inside a block)."""

    def __init__(self, config: DSparkConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def _heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        return x.view(*x.shape[:2], heads, self.head_dim).transpose(1, 2)

    def project_kv(
        self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = apply_rotary(self._heads(self.k_proj(hidden_states), self.num_kv_heads), cos, sin)
        return key, self._heads(self.v_proj(hidden_states), self.num_kv_heads)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        context_key: torch.Tensor,
        context_value: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        query = apply_rotary(self._heads(self.q_proj(hidden_states), self.num_heads), cos, sin)
        block_key, block_value = self.project_kv(hidden_states, cos, sin)
        key = torch.cat([context_key, block_key], dim=2)
        value = torch.cat([context_value, block_value], dim=2)
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, enable_gqa=self.num_heads != self.num_kv_heads
        )
        return self.o_proj(out.transpose(1, 2).reshape(*hidden_states.shape[:2], -1))


class DSparkMLP(nn.Module):
    def __init__(self, config: DSparkConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DSparkDecoderLayer(nn.Module):
    def __init__(self, config: DSparkConfig):
        super().__init__()
        self.self_attn = DSparkAttention(config)
        self.mlp = DSparkMLP(config)
        self.input_layernorm = DSparkRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = DSparkRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        context_key: torch.Tensor,
        context_value: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attn = self.self_attn(self.input_layernorm(hidden_states), cos, sin, context_key, context_value, attention_mask)
        hidden_states = hidden_states + attn
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class DSparkPreTrainedModel(PreTrainedModel):
    config_class = DSparkConfig
    base_model_prefix = "dspark"
    supports_gradient_checkpointing = False
    _no_split_modules = ["DSparkDecoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(mean=0.0, std=std)
        elif isinstance(module, DSparkRMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, DSparkDrafter):
            module.mask_embedding.normal_(mean=0.0, std=std)
            if module.markov_out is not None:
                module.markov_out.weight.zero_()  # an untrained Markov head adds nothing


class DSparkDrafter(DSparkPreTrainedModel):
    """The DSpark drafter. Pass it as `assistant_model=` to a bound target's `generate()`.

    `stats` holds the figures of the last `generate()` call with it (`dspark_hf.DSparkStats`).
    """

    def __init__(self, config: DSparkConfig):
        super().__init__(config)
        d = config.hidden_size
        self.fc = nn.Linear(len(config.target_layer_ids) * d, d, bias=False)
        self.context_norm = DSparkRMSNorm(d, eps=config.rms_norm_eps)
        self.mask_embedding = nn.Parameter(torch.zeros(d))
        self.layers = nn.ModuleList([DSparkDecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = DSparkRMSNorm(d, eps=config.rms_norm_eps)
        self.rotary_emb = DSparkRotaryEmbedding(config)
        rank = config.markov_rank
        self.markov_in = nn.Embedding(config.vocab_size, rank) if rank else None  # W1
        self.markov_out = nn.Linear(rank, config.vocab_size, bias=False) if rank else None  # W2
        self.confidence_head = nn.Linear(d + rank, 1)
        self.stats: Any = None  # figures of the last generate() call, set by the routing that ran it
        self._bound: tuple[nn.Module, nn.Module, int] | None = None  # (embedding, lm head, id(target)); not stored
        self._draft_rows: tuple[tuple, tuple] | None = None  # (weights' identity, draft-vocabulary rows); see below
        self.post_init()

    # ----- construction and binding -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> DSparkDrafter:
        """As `PreTrainedModel.from_pretrained`, but weights load only from safetensors (never unpickled)."""
        if kwargs.setdefault("use_safetensors", True) is not True:
            raise ValueError("DSpark drafters load weights from safetensors only; drop use_safetensors=False.")
        return super().from_pretrained(*args, **kwargs)

    @classmethod
    def from_target(cls, target: PreTrainedModel, **overrides) -> DSparkDrafter:
        """An untrained drafter shaped for `target` (any Llama- or Qwen-style decoder), already bound to it."""
        tc = target.config.get_text_config()
        rope = getattr(tc, "rope_parameters", None) or {}
        fields = dict(
            hidden_size=tc.hidden_size,
            intermediate_size=tc.intermediate_size,
            num_attention_heads=tc.num_attention_heads,
            num_key_value_heads=getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads,
            head_dim=getattr(tc, "head_dim", None),
            hidden_act=getattr(tc, "hidden_act", "silu"),
            rms_norm_eps=getattr(tc, "rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", getattr(tc, "rope_theta", 10000.0)),
            max_position_embeddings=getattr(tc, "max_position_embeddings", 8192),
            vocab_size=target.get_output_embeddings().weight.shape[0],
            target_num_hidden_layers=tc.num_hidden_layers,
            target_model_type=tc.model_type,
            target_name_or_path=target.config.name_or_path or None,
            embedding_fingerprint=embedding_fingerprint(target),
        )
        fields.update(overrides)
        drafter = cls(DSparkConfig(**fields))
        weight = target.get_input_embeddings().weight
        return drafter.to(device=weight.device, dtype=weight.dtype).bind(target)

    def bind(self, target: PreTrainedModel) -> DSparkDrafter:
        """Share `target`'s input embedding and LM head (by reference, never copied or saved).

        Moves the drafter to the target's device and dtype, again whenever the target moved or was cast since.
        Raises `ValueError` if the drafter was not built for this target.
        """
        embedding, head = target.get_input_embeddings(), target.get_output_embeddings()
        if self._bound is None or self._bound[2] != id(target):
            check_target_compatible(self.config, target)
            self._bound = (embedding, head, id(target))
            self._draft_rows = None
        if embedding.weight.device != self.device or embedding.weight.dtype != self.dtype:
            self.to(device=embedding.weight.device, dtype=embedding.weight.dtype)
        return self

    @property
    def is_bound(self) -> bool:
        return self._bound is not None

    def _shared(self) -> tuple[nn.Module, nn.Module]:
        if self._bound is None:
            raise RuntimeError(
                "This DSparkDrafter is not bound to a target. Pass it to `target.generate(..., assistant_model=...)` "
                "or call `drafter.bind(target)` first."
            )
        return self._bound[0], self._bound[1]

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._shared()[0](input_ids)

    def lm_head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self._shared()[1](hidden_states)

    # ----- the parallel part ---------------------------------------------------------------------------------------

    def fuse_context(self, target_hidden_states: tuple[torch.Tensor, ...], length: int | None = None) -> torch.Tensor:
        """Concatenate the chosen target layers (first `length` positions) and fuse them to width d."""
        return self.fuse_features(self.context_features(target_hidden_states, length))

    def context_features(
        self, target_hidden_states: tuple[torch.Tensor, ...], length: int | None = None
    ) -> torch.Tensor:
        """The chosen target layers side by side (first `length` positions): (batch, length, layers · d)."""
        return torch.cat([target_hidden_states[i][:, :length] for i in self.config.target_layer_ids], dim=-1)

    def fuse_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.context_norm(self.fc(features.to(self.dtype)))

    def append_context(self, cache: DSparkContextCache, fused: torch.Tensor, start: torch.Tensor | None = None) -> None:
        """Project fused features to keys/values in every draft layer and append them at the next positions.

        With `start` (a 0-d device tensor holding `cache.length`) positions stay on the device and the cache is not
        advanced (the caller does it): the step then has fixed shapes and no host sync, as a CUDA graph needs."""
        n = fused.shape[1]
        if start is None:
            positions = torch.arange(cache.length, cache.length + n, device=fused.device)
        else:
            positions = start + torch.arange(n, device=fused.device)
        cos, sin = self.rotary_emb(positions[None], fused.dtype)
        at = None if start is None else positions
        for idx, layer in enumerate(self.layers):
            cache.append(idx, *layer.self_attn.project_kv(fused, cos, sin), positions=at)
        if start is None:
            cache.advance(n)

    def block_embeddings(self, anchor_ids: torch.Tensor, block_size: int | None = None) -> torch.Tensor:
        """[embed(anchor), mask, ..., mask] for each anchor: (batch, block_size, d)."""
        block_size = block_size or self.config.block_size
        anchor = self.embed_tokens(anchor_ids.view(-1, 1)).to(self.dtype)
        masks = self.mask_embedding.to(anchor.dtype).expand(anchor.shape[0], block_size - 1, -1)
        return torch.cat([anchor, masks], dim=1)

    def forward(
        self,
        block_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        context_keys_values: list[tuple[torch.Tensor, torch.Tensor]],
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the draft layers on blocks. Returns the normed hidden states (batch, block, d).

        `context_keys_values[l]` are layer l's context keys/values (batch, kv_heads, ctx, head_dim);
        `attention_mask` (bool, broadcastable to (batch, heads, block, ctx + block)) is only needed when several
        blocks share one context, as in training; one block at inference attends to everything.
        """
        cos, sin = self.rotary_emb(position_ids, block_embeds.dtype)
        hidden = block_embeds
        for layer, (key, value) in zip(self.layers, context_keys_values, strict=True):
            hidden = layer(hidden, cos, sin, key, value, attention_mask)
        return self.norm(hidden)

    # ----- the sequential part -------------------------------------------------------------------------------------

    def markov_weights(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(W1, W2), both (V, r): the bias at position k is `W2 · W1[x_{k-1}]`. (None, None) with the head off."""
        if self.markov_out is None:
            return None, None
        return self.markov_in.weight, self.markov_out.weight

    # ----- the draft vocabulary ------------------------------------------------------------------------------------

    def set_draft_vocab(self, token_ids: Sequence[int] | torch.Tensor | None) -> None:
        """Draft from these tokens only (None: the whole vocabulary); saved with the config. See `draft_logits`."""
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.flatten().tolist()
        ids = None if token_ids is None else sorted({int(t) for t in token_ids})
        self.config.draft_vocab = check_draft_vocab(ids, self.config.vocab_size)
        self._draft_rows = None

    def draft_logits(
        self, hidden: torch.Tensor, restrict: bool = True, linear: Callable = F.linear
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Base logits of a drafted block, the W2 rows to add the Markov bias with, and the draft vocabulary's token
        ids (None: logits and W2 span the whole vocabulary).

        With a draft vocabulary (and `restrict`) only its rows of the LM head and of W2 are used: on a CPU the
        full-vocabulary LM head over a block costs about as much as a target forward (`linear` computes the rows'
        product; the decoding core passes oneDNN's on a CPU). A draft outside it is never proposed, which can only
        cost acceptance, never correctness: the target verifies every token."""
        if self.config.draft_vocab is None or not restrict:
            return self.lm_head(hidden), self.markov_weights()[1], None
        ids, weight, bias, w2 = self._draft_vocab_rows()
        return linear(hidden, weight, bias), w2, ids

    def _draft_vocab_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(ids, LM-head rows, LM-head bias rows, W2 rows), gathered once and reused while the weights are the same
        tensors, unmodified (`_version` counts in-place updates such as optimizer steps)."""
        head = self._shared()[1]
        weights = [head.weight, getattr(head, "bias", None), self.markov_weights()[1]]
        identity = tuple((t.data_ptr(), t._version, t.dtype) if t is not None else None for t in weights)
        if self._draft_rows is None or self._draft_rows[0] != identity:
            ids = torch.tensor(self.config.draft_vocab, dtype=torch.long, device=head.weight.device)
            rows = tuple(t.detach()[ids].contiguous() if t is not None else None for t in weights)
            self._draft_rows = (identity, (ids, *rows))
        return self._draft_rows[1]

    # ----- the context cache ---------------------------------------------------------------------------------------

    def new_context_cache(self, capacity: int | None = None) -> DSparkContextCache:
        """An empty context cache; with `capacity`, its storage for that many positions is allocated now."""
        cache = DSparkContextCache(len(self.layers))
        if capacity:
            c = self.config
            shape = (1, c.num_key_value_heads, capacity, c.head_dim)
            for idx in range(len(self.layers)):
                cache.keys[idx] = torch.zeros(shape, dtype=self.dtype, device=self.device)
                cache.values[idx] = torch.zeros(shape, dtype=self.dtype, device=self.device)
        return cache


def embedding_fingerprint(target: PreTrainedModel) -> list[float]:
    """A few values of the target's input embedding: rows spread over the vocabulary, first dims of each.

    Compared by correlation, so the same model in another dtype or quantization (e.g. the GGUF build) still matches.
    """
    weight = target.get_input_embeddings().weight.detach()
    rows = torch.linspace(0, weight.shape[0] - 1, FINGERPRINT_ROWS).long().to(weight.device)
    values = weight[rows, :FINGERPRINT_DIMS].float().flatten().cpu()
    return [round(v, 5) for v in values.tolist()]


def _correlation(a: list[float], b: list[float]) -> float:
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum()) / denom if denom > 0 else 0.0


def check_target_compatible(config: DSparkConfig, target: PreTrainedModel) -> None:
    """Refuse a target the drafter was not built for, naming every mismatch."""
    tc = target.config.get_text_config()
    head = target.get_output_embeddings()
    problems = []
    if tc.hidden_size != config.hidden_size:
        problems.append(f"hidden size {tc.hidden_size} != {config.hidden_size}")
    vocab = head.weight.shape[0] if head is not None else tc.vocab_size
    if vocab != config.vocab_size:
        problems.append(f"vocabulary {vocab} != {config.vocab_size}")
    if tc.num_hidden_layers != config.target_num_hidden_layers:
        problems.append(f"layer count {tc.num_hidden_layers} != {config.target_num_hidden_layers}")
    if not problems and config.embedding_fingerprint is not None:
        corr = _correlation(embedding_fingerprint(target), config.embedding_fingerprint)
        if corr < FINGERPRINT_MIN_CORRELATION:
            problems.append(f"embedding fingerprint correlation {corr:.3f} < {FINGERPRINT_MIN_CORRELATION}")
    if problems:
        expected = config.target_name_or_path or "its original target"
        got = target.config.name_or_path or type(target).__name__
        raise ValueError(
            f"This DSpark drafter was built for {expected}, not for {got}: " + "; ".join(problems) + ". "
            "Load the drafter trained for this target, or build one with DSparkDrafter.from_target(target)."
        )
