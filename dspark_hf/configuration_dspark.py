"""DSpark drafter configuration.

This file is also the Hub folder's configuration code (`dspark export-hub`), so it imports only `transformers`.
"""

from __future__ import annotations

from transformers import PretrainedConfig

GATING_NAMES = ("scheduler", "threshold", "fixed")


def parse_gating(spec: str) -> tuple[str, float | None]:
    """`"name"` or `"name:value"` → (name, value); raises on anything else, naming the accepted forms."""
    name, _, value = spec.partition(":")
    problem = name not in GATING_NAMES or (name == "scheduler" and value)
    try:
        number = float(value) if value else None
    except ValueError:
        problem = True
    if not problem and name == "fixed" and number is not None and (number != int(number) or number < 0):
        problem = True
    if problem:
        raise ValueError(
            f"Unknown gating {spec!r}: choose 'scheduler', 'threshold' (or 'threshold:<a in [0, 1]>'), "
            "'fixed' (all drafts) or 'fixed:<L>', or pass a callable policy"
        )
    return name, number


def default_target_layer_ids(num_target_layers: int, num_features: int = 5) -> list[int]:
    """Indices into the target's `hidden_states` tuple (0 = embeddings), spread evenly from layer 1 to N-3.

    This follows the reference recipe: early layers carry token identity, late layers the next-token plan.
    """
    if num_target_layers < 4:
        return list(range(1, num_target_layers + 1))[:num_features]
    last = num_target_layers - 3
    count = min(num_features, last)
    if count == 1:
        return [last]
    return sorted({round(1 + i * (last - 1) / (count - 1)) for i in range(count)})


def check_draft_vocab(draft_vocab, vocab_size: int) -> list[int] | None:
    """`draft_vocab` as a list of ints, or a clear error if it is not strictly increasing ids of the vocabulary."""
    if draft_vocab is None:
        return None
    ids = [int(t) for t in draft_vocab]
    if not ids or any(b <= a for a, b in zip(ids, ids[1:], strict=False)):
        raise ValueError("draft_vocab must be a non-empty, strictly increasing list of token ids (or None)")
    if ids[0] < 0 or ids[-1] >= vocab_size:
        raise ValueError(f"draft_vocab holds ids outside the vocabulary 0..{vocab_size - 1}")
    return ids


class DSparkConfig(PretrainedConfig):
    r"""Configuration of a [`DSparkDrafter`].

    The drafter has the target's width; it is bound to one target at run time and borrows its input embedding and LM
    head (not stored here). The `target_*` fields and `embedding_fingerprint` describe that target so that binding to
    another one fails early.

    Args:
        hidden_size, intermediate_size, num_attention_heads, num_key_value_heads, head_dim, rms_norm_eps, rope_theta,
        hidden_act: shape of the draft layers (taken from the target by `DSparkDrafter.from_target`).
        num_hidden_layers: number of bidirectional draft layers (the reference uses 2-5).
        vocab_size: the target's vocabulary size.
        target_layer_ids: indices into the target's `hidden_states` tuple whose features are fused as context.
        target_num_hidden_layers, target_model_type, target_name_or_path: identity of the target.
        embedding_fingerprint: a few values of the target's input embedding, compared by correlation at bind time.
        block_size: γ, draft tokens per round (anchor-first block of γ inputs).
        markov_rank: rank of the Markov head (`W2 · W1[x_{k-1}]`); 0 turns it off (the DFlash ablation).
        confidence_temperatures: per-position temperatures fitted by calibration (None = 1.0 everywhere).
        gating: default prefix policy: `"scheduler"` (L maximising expected tokens/s from costs measured on the
            device), `"threshold"` / `"threshold:<a>"`, or `"fixed"` / `"fixed:<L>"`.
        confidence_threshold: for `"threshold"`, keep draft k while its predicted prefix survival is at least this.
        draft_vocab: sorted token ids the drafter drafts from (None = the whole vocabulary). Drafting then computes
            LM-head and Markov logits for these tokens only, a large share of a round on the CPU; the target still
            verifies over its whole vocabulary, so output stays lossless. Set by `DSparkDrafter.set_draft_vocab`.
    """

    model_type = "dspark"

    def __init__(
        self,
        hidden_size: int = 576,
        intermediate_size: int = 1536,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 9,
        num_key_value_heads: int = 3,
        head_dim: int | None = None,
        hidden_act: str = "silu",
        rms_norm_eps: float = 1e-5,
        rope_theta: float = 100000.0,
        max_position_embeddings: int = 8192,
        vocab_size: int = 49152,
        target_layer_ids: list[int] | None = None,
        target_num_hidden_layers: int = 30,
        target_model_type: str = "llama",
        target_name_or_path: str | None = None,
        embedding_fingerprint: list[float] | None = None,
        block_size: int = 7,
        markov_rank: int = 128,
        confidence_temperatures: list[float] | None = None,
        gating: str = "scheduler",
        confidence_threshold: float = 0.1,
        draft_vocab: list[int] | None = None,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if markov_rank < 0:
            raise ValueError(f"markov_rank must be >= 0 (0 turns the Markov head off), got {markov_rank}")
        parse_gating(gating)
        if hidden_size % num_attention_heads and head_dim is None:
            raise ValueError(
                f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}; set head_dim"
            )
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        self.vocab_size = vocab_size
        self.target_num_hidden_layers = target_num_hidden_layers
        self.target_layer_ids = list(target_layer_ids or default_target_layer_ids(target_num_hidden_layers))
        self.target_model_type = target_model_type
        self.target_name_or_path = target_name_or_path
        self.embedding_fingerprint = embedding_fingerprint
        self.block_size = block_size
        self.markov_rank = markov_rank
        if confidence_temperatures is not None and len(confidence_temperatures) != block_size:
            raise ValueError(
                f"confidence_temperatures has {len(confidence_temperatures)} entries, expected block_size={block_size}"
            )
        self.confidence_temperatures = confidence_temperatures
        self.gating = gating
        self.confidence_threshold = confidence_threshold
        self.draft_vocab = check_draft_vocab(draft_vocab, vocab_size)
        self.initializer_range = initializer_range
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
        bad = [i for i in self.target_layer_ids if not 0 <= i <= target_num_hidden_layers]
        if bad:
            raise ValueError(
                f"target_layer_ids {bad} are outside the target's hidden_states (0..{target_num_hidden_layers})"
            )
