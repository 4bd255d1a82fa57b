"""The speculative loop on a static target cache, its verification forwards replayed from CUDA graphs.

Transformers' assisted-decoding loop runs the target eagerly on a dynamic cache: on an H200 a SmolLM2-135M forward
is ~25 ms of kernel launches for well under 1 ms of GPU work, whatever it carries, and the loop's own bookkeeping
adds ~5 ms a round (bench/README.md, session 11). Here, as in gpt-fast, the target's KV cache is allocated once, a
verification forward of t tokens (anchor + drafts, t = 1 .. block + 1) is captured once as a CUDA graph and replayed
each round, and the loop itself is a few tensor ops and one host sync.

`generate(..., assistant_model=drafter)` takes this loop when the request is one it reproduces exactly (greedy, or
sampling with temperature / top-k / top-p; no streamer, stopping criteria, extra processors or dict outputs) and the
target runs on CUDA; everything else goes through Transformers' loop. Drafting, gating and prompt lookup are the
same `DSparkCandidateGenerator` either way; acceptance follows Transformers' own rules (greedy matching, speculative
speculative sampling, matching against the target's sample for lookup drafts), so both loops are
lossless in the same way. $DSPARK_STATIC_LOOP: "0" never takes it, "1" takes it on any device (uncaptured off CUDA:
how the tests run it on the CPU), unset: on CUDA unless $DSPARK_CUDA_GRAPHS=0.

Self-contained on purpose: this file travels with every checkpoint as Hub remote code.
"""

from __future__ import annotations

import copy
import inspect
import os
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, StaticCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from . import cuda_graphs
from .cuda_graphs import CUDA_GRAPHS_ENV, GraphSet, tensor_identity, warn_once
from .generation import DSparkCandidateGenerator, cut_at_eos

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from .modeling_dspark import DSparkDrafter

STATIC_LOOP_ENV = "DSPARK_STATIC_LOOP"
CAPACITY_STEP = 1024  # the static cache grows in these steps, so calls of similar length reuse one cache and its graphs
# generation settings this loop reproduces; any other non-default one sends the call through Transformers' loop
SUPPORTED_SETTINGS = {
    "max_length", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "num_beams",
    "num_return_sequences", "use_cache", "eos_token_id", "pad_token_id", "bos_token_id",
    "prompt_lookup_num_tokens", "max_matching_ngram_size",
    "num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold",
}  # fmt: skip
SUPPORTED_KWARGS = {"input_ids", "inputs", "attention_mask", "assistant_model", "generation_config"}


class StaticTarget:
    """The target on a KV cache of fixed capacity, with one CUDA graph per verification length.

    What makes a forward capturable: the cache never moves; where the forward starts (`start`, a device scalar) is
    copied into each cache layer's write position and into the position ids inside the graph; the attention mask over
    the whole capacity (key slot <= query position) is computed from it on the device. Rejected drafts leave stale
    keys past the accepted prefix; the next forward overwrites them and the mask hides them until then.
    Kept on the target between calls (`for_target`), so the graphs are captured once per capacity; the graphs live in
    a `GraphSet` of their own (see `cuda_graphs.py` for why that is what keeps them valid).
    """

    def __init__(self, target: PreTrainedModel, capacity: int, capture: bool):
        self.target, self.capacity = target, capacity
        device = self.device = target.device
        self.dtype = target.dtype
        self.identity = weights_identity(target)  # the graphs replay these tensors' addresses
        self.cache = StaticCache(config=target.config, max_cache_len=capacity)
        # the cache keyword was renamed `past_key_values` -> `cache` after transformers 5.17
        self.cache_kw = "cache" if "cache" in inspect.signature(target.forward).parameters else "past_key_values"
        self.start = torch.zeros((), dtype=torch.long, device=device)
        self.slots = torch.arange(capacity, device=device)
        self.inputs: dict[int, torch.Tensor] = {}  # tokens -> the captured graph's input ids
        self.graphs = GraphSet(device) if capture else None
        self.failed = False  # a capture failed: this call runs uncaptured, the next one starts afresh

    @classmethod
    def for_target(cls, target: PreTrainedModel, length: int) -> StaticTarget:
        """The target's static cache (and graphs) if it holds `length` tokens and the target's weights are the ones
        it was built on, else a new one (larger when needed)."""
        capture = cuda_graphs.capture_graphs(target.device)
        kept = getattr(target, "_dspark_static_target", None)
        if kept is not None and (kept.capacity < length or kept.failed or not kept.matches(target)):
            target._dspark_static_target = kept = None  # its graphs and cache go before new ones are allocated
        if kept is None:
            kept = cls(target, -(-length // CAPACITY_STEP) * CAPACITY_STEP, capture)
            target._dspark_static_target = kept
        return kept

    def matches(self, target: PreTrainedModel) -> bool:
        return (self.device, self.dtype) == (target.device, target.dtype) and self.identity == weights_identity(target)

    def _forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        for layer in self.cache.layers:  # where this forward writes its keys and values
            layer.cumulative_length.copy_(self.start)
        positions = self.start + torch.arange(ids.shape[1], device=ids.device)
        visible = self.slots[None, :] <= positions[:, None]
        dtype = self.target.dtype
        mask = torch.zeros(visible.shape, dtype=dtype, device=ids.device).masked_fill_(~visible, torch.finfo(dtype).min)
        out = self.target.forward(  # not a call: `forward` runs the target's hooks once, outside any capture
            input_ids=ids, position_ids=positions[None], attention_mask=mask[None, None], use_cache=True,
            output_hidden_states=True, **{self.cache_kw: self.cache},
        )  # fmt: skip
        return out.logits[0], out.hidden_states

    def _replay(self, ids: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None:
        """The graphed forward of `ids`, captured on first use; None where capturing failed (this call then runs
        uncaptured, exactly as on the CPU)."""
        tokens = ids.shape[1]
        if tokens not in self.graphs:
            self.inputs[tokens] = torch.zeros(1, tokens, dtype=torch.long, device=self.device)
            try:
                self.graphs.capture(tokens, lambda: self._forward(self.inputs[tokens]))
            except Exception as err:  # noqa: BLE001 - any failure of the fast path falls back to the exact eager one
                warn_once("verify-capture", f"CUDA-graph verification unavailable ({err!r}); verifying uncaptured")
                self.failed = True
                return None
        self.inputs[tokens].copy_(ids)
        return self.graphs.replay(tokens)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, start: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Logits (tokens, V) and hidden states of `ids` (1, tokens) written at positions start.. of the cache. The
        prompt runs eagerly; a graph's outputs are overwritten by the next replay. The target's forward hooks run
        around it as around a call (replayed or not, captured or not): counters and profilers see every forward."""
        tokens = ids.shape[1]
        if start + tokens > self.capacity:
            raise ValueError(f"{start + tokens} tokens exceed the static cache's {self.capacity}")
        for hook in self.target._forward_pre_hooks.values():
            hook(self.target, (ids,))
        self.start.fill_(start)
        outputs = None
        if self.graphs is not None and not self.failed and start > 0:
            outputs = self._replay(ids)
        if outputs is None:
            self.start.fill_(start)  # a failed capture's warm-up may have moved the cache's write positions
            outputs = self._forward(ids)
        for hook in self.target._forward_hooks.values():
            hook(self.target, (ids,), outputs)
        return outputs


def weights_identity(model: torch.nn.Module) -> tuple:
    """The identity of every parameter and buffer (see `tensor_identity`)."""
    return tensor_identity([*model.parameters(), *model.buffers()])


def _set_generation_fields(config: GenerationConfig) -> set[str]:
    """Fill the unset fields with Transformers' defaults (as generate() does) and return the ones changed from them."""
    defaults = config._get_default_generation_params()
    for key, value in defaults.items():
        if getattr(config, key, None) is None:
            setattr(config, key, value)
    changed = set()
    for key, value in config.to_dict().items():
        if key.startswith("_") or key == "transformers_version" or value in (None, False, [], {}):
            continue
        if key in defaults and value == defaults[key]:
            continue
        changed.add(key)
    return changed


def static_loop_request(
    target: PreTrainedModel, args: tuple, kwargs: dict[str, Any]
) -> tuple[torch.LongTensor, GenerationConfig] | None:
    """(input_ids, resolved generation config) when this call may take the static loop, else None."""
    wanted = os.environ.get(STATIC_LOOP_ENV, "")
    if wanted == "0" or (wanted != "1" and (target.device.type != "cuda" or os.environ.get(CUDA_GRAPHS_ENV) == "0")):
        return None
    if len(args) > 1 or not hasattr(GenerationConfig, "_get_default_generation_params"):
        return None
    config = copy.deepcopy(kwargs.get("generation_config") or target.generation_config)
    fields = {k: v for k, v in kwargs.items() if k not in SUPPORTED_KWARGS}
    if config.update(**fields) or _set_generation_fields(config) - SUPPORTED_SETTINGS:
        return None  # a keyword generate() handles beyond the config (a streamer, ...), or a setting we do not
    ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
    if config.max_new_tokens is not None:
        config.max_length = ids.shape[1] + config.max_new_tokens
    if config.max_length <= ids.shape[1]:
        return None  # nothing to generate: generate() says so its own way
    eos = config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    pad = config.pad_token_id
    if kwargs.get("attention_mask") is None and pad is not None and pad not in eos and bool((ids == pad).any()):
        return None  # generate() would mask the prompt's pad tokens (an inferred attention mask): its loop handles it
    config._eos_token_tensor = torch.tensor(eos, dtype=torch.long, device=ids.device) if eos else None
    return ids, config


def warpers(config: GenerationConfig) -> LogitsProcessorList:
    """The processors generate() builds for these settings (sampling only), in its order."""
    processors = LogitsProcessorList()
    if config.do_sample:
        if config.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            processors.append(TopKLogitsWarper(top_k=config.top_k))
        if config.top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=config.top_p))
    return processors


def speculative_sampling(drafts: torch.Tensor, q_logits: torch.Tensor, p_logits: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 of Leviathan et al. (2023), as Transformers runs it: keep draft i with probability
    min(1, p_i / q_i) until the first rejection, then sample from norm(max(p - q, 0)) there, or from p after the last
    draft when all were kept. drafts (L,), q_logits (L, V), p_logits (L + 1, V) -> the tokens to append."""
    q, p = q_logits.float().softmax(-1), p_logits.softmax(-1)
    rows = torch.arange(drafts.shape[0], device=drafts.device)
    kept = torch.rand(rows.shape, device=p.device) <= p[rows, drafts] / q[rows, drafts]
    n = int(kept.long().cumprod(0).sum())
    last = p[n] if n == drafts.shape[0] else (p[n] - q[n]).clamp_min(0)
    return torch.cat([drafts[:n], torch.multinomial(last / last.sum(), 1)])


@torch.no_grad()
def speculative_generate(
    target: PreTrainedModel,
    drafter: DSparkDrafter,
    input_ids: torch.LongTensor,
    config: GenerationConfig,
    gating: Any = None,
) -> torch.LongTensor:
    """What `target.generate(input_ids, assistant_model=drafter, ...)` returns, by the static loop (batch size 1)."""
    processors = warpers(config)
    generator = DSparkCandidateGenerator(drafter, target, config, processors, gating=gating, static_loop=True)
    longest = max(generator.block_size, generator.lookup_tokens) + 1
    static = StaticTarget.for_target(target, config.max_length + longest)
    eos = set(config._eos_token_tensor.tolist()) if config._eos_token_tensor is not None else set()

    def choose(logits: torch.Tensor) -> torch.Tensor:  # the target's own choice at each row: (rows,)
        if not config.do_sample:
            return logits.argmax(-1)
        return torch.multinomial(processors(ids, logits.float()).softmax(-1), 1)[:, 0]

    ids = input_ids
    logits, hidden = static.forward(ids, 0)
    new = choose(logits[-1:]).tolist()
    ids = torch.cat([ids, ids.new_tensor([new])], dim=-1)
    while ids.shape[1] < config.max_length and new[-1] not in eos:
        candidates, q_logits = generator.get_candidates(ids, model_outputs=SimpleNamespace(hidden_states=hidden))
        drafts = candidates.shape[1] - ids.shape[1]
        logits, hidden = static.forward(candidates[:, -drafts - 1 :], ids.shape[1] - 1)
        if config.do_sample and q_logits is not None:
            new = speculative_sampling(candidates[0, -drafts:], q_logits[0], processors(candidates, logits.float()))
            new = new.tolist()
        else:  # drafts kept while they equal the target's own choice, then its choice after the last one kept
            both = torch.cat([choose(logits), candidates[0, ids.shape[1] :]]).tolist()  # one copy to the host
            chosen, drafted = both[: drafts + 1], both[drafts + 1 :]
            kept = next((k for k, (c, d) in enumerate(zip(chosen[:drafts], drafted, strict=True)) if c != d), drafts)
            new = chosen[: kept + 1]
        new = cut_at_eos(new[: config.max_length - ids.shape[1]], eos)
        ids = torch.cat([ids, ids.new_tensor([new])], dim=-1)
        generator.update_candidate_strategy(ids, logits, len(new) - 1)
    drafter.stats.loop = "static"
    return ids
