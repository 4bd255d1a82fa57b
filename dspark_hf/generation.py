"""DSpark inside `model.generate()`: the candidate generator and the routing that selects it.

One round, all in `DSparkCandidateGenerator.get_candidates`:
  1. append the target's features of the newly verified tokens to the drafter's context cache (and stop there, a
     plain one-token round, while the gating policy says drafting does not pay: `should_draft`);
  2. one backbone pass over the anchor-first block → hidden states and base logits for γ positions (over the draft
     vocabulary when the drafter has one);
  3. `markov_draft`: the Markov bias, the logits processors, token choice and confidences, left to right (one fused
     Triton launch on CUDA for greedy, temperature, top-k and top-p; a PyTorch loop elsewhere or for other processors);
  4. cut at EOS and at the length budget, let the gating policy choose the prefix L, hand L drafts (with the exact
     logits they were sampled from) to Transformers, whose loop verifies them with one target forward.
On a GPU, steps 1-3 replay two CUDA graphs captured when the call starts (`cuda_graphs.py`): the same computation on
a context cache allocated for the whole call, without ~150 kernel launches per round.
With `prompt_lookup_num_tokens=N` as well (Transformers' own prompt-lookup knob), a round whose recent tokens occurred
earlier in the sequence verifies up to N tokens of what followed there instead (`lookup_continuation`, guided by the
drafter's first token; under the scheduler cut to the length that pays, from how earlier lookups fared); the target
verifies those deterministic drafts by exact matching, so this is lossless too.

Self-contained on purpose: this file travels with every checkpoint as Hub remote code.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from transformers.generation.candidate_generator import CandidateGenerator
from transformers.generation.logits_process import LogitsProcessorList

from . import cuda_graphs
from .cpu_linears import onednn_linears
from .cuda_graphs import DraftingGraphs, warn_once
from .gating import GatingPolicy, make_gating
from .markov_kernel import fused_sampling, markov_draft, resolve_backend

CUDA_GRAPHS_MAX_LENGTH = 16384  # beyond this, attending to the whole preallocated context would cost too much

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedModel

    from .modeling_dspark import DSparkDrafter


def acceptance_length(accepted_per_round: Sequence[int]) -> float:
    """τ: mean tokens per round, the target's bonus token included (a round that accepts n drafts yields n + 1)."""
    return (sum(accepted_per_round) + len(accepted_per_round)) / len(accepted_per_round) if accepted_per_round else 0.0


def position_acceptance(
    accepted_per_round: Sequence[int], verified_per_round: Sequence[int], block_size: int
) -> list[float | None]:
    """For each block position k: the share of the rounds that verified position k which accepted it (None where no
    round verified k). Position k is accepted only if every earlier one was, so the rates fall with k."""
    rates: list[float | None] = []
    for k in range(block_size):
        verified = sum(1 for v in verified_per_round if v > k)
        accepted = sum(1 for a in accepted_per_round if a > k)
        rates.append(accepted / verified if verified else None)
    return rates


def lookup_continuation(ids: Sequence[int], max_ngram: int = 3, first_token: int | None = None) -> list[int]:
    """Prompt lookup guided by the drafter: what followed an earlier occurrence of the sequence's last tokens.

    Candidates are the earlier positions whose last 1..`max_ngram` tokens equal the sequence's last ones. One whose
    continuation starts with `first_token` (the drafter's first draft) wins, longest match first, then the latest;
    failing that, the longest match of at least two tokens, then the latest; else [] (draft with the drafter). On the
    shipped SmolLM2 drafter this mix beat both the drafter and Transformers' unguided first-match lookup on all three
    eval sets (bench/README.md, session 8). The continuation runs to the end of the sequence: the caller cuts it."""
    n = len(ids)
    if n < 2:
        return []
    last = ids[-1]
    guided = unguided = (0, -1)  # (match length, end of the match)
    for end in range(n - 2, -1, -1):  # latest first; the continuation starts at end + 1
        if ids[end] != last:
            continue
        size = 1
        while size < max_ngram and end - size >= 0 and ids[end - size] == ids[n - 1 - size]:
            size += 1
        if first_token is not None and ids[end + 1] == first_token:
            if size > guided[0]:
                guided = (size, end)
        elif size > unguided[0]:
            unguided = (size, end)
    if guided[0]:
        return list(ids[guided[1] + 1 :])
    return list(ids[unguided[1] + 1 :]) if unguided[0] >= 2 else []


def cut_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """Nothing after EOS can be kept, so never verify it."""
    return tokens[: next((k + 1 for k, t in enumerate(tokens) if t in eos_ids), len(tokens))]


class DraftedBlock(NamedTuple):
    """One drafted block: tokens (γ,), the logits q each token was drawn from (γ, V' over the draft vocabulary or
    V), prefix survival a_k (γ,), the draft vocabulary's token ids (None: the whole vocabulary), and `packed`: tokens,
    survival and the drafter's most likely first token in one float64 vector (γ + γ + 1,), for one host copy."""

    tokens: torch.Tensor
    q_logits: torch.Tensor
    prefix_probs: torch.Tensor
    vocab_ids: torch.Tensor | None
    packed: torch.Tensor


@dataclass
class DSparkStats:
    """Figures of one `generate()` call. τ counts the bonus token: a round that accepts n drafts yields n + 1."""

    block_size: int
    rounds: int = 0
    drafted_tokens: int = 0
    verified_tokens: int = 0
    accepted_tokens: int = 0
    accepted_per_round: list[int] = field(default_factory=list)
    verified_per_round: list[int] = field(default_factory=list)
    lookup_per_round: list[bool] = field(default_factory=list)  # which rounds verified a lookup continuation
    draft_time_s: float = 0.0
    total_time_s: float = 0.0
    loop: str = "transformers"  # whose loop verified: Transformers' or the static one (static_loop.py)

    def record(self, drafted: int, verified: int, accepted: int, looked_up: bool) -> None:
        """One round: `drafted` proposed, the first `verified` of them sent to the target, `accepted` kept."""
        self.rounds += 1
        self.drafted_tokens += drafted
        self.verified_tokens += verified
        self.accepted_tokens += accepted
        self.accepted_per_round.append(accepted)
        self.verified_per_round.append(verified)
        self.lookup_per_round.append(looked_up)

    @property
    def lookup_rounds(self) -> int:
        """Rounds that verified a prompt-lookup continuation instead of the drafter's block."""
        return sum(self.lookup_per_round)

    @property
    def tau(self) -> float:
        return acceptance_length(self.accepted_per_round)

    @property
    def per_position_acceptance(self) -> list[float | None]:
        return position_acceptance(self.accepted_per_round, self.verified_per_round, self.block_size)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "lookup_rounds": self.lookup_rounds,
            "drafted_tokens": self.drafted_tokens,
            "verified_tokens": self.verified_tokens,
            "accepted_tokens": self.accepted_tokens,
            "tau": self.tau,
            "per_position_acceptance": self.per_position_acceptance,
            "accepted_per_round": list(self.accepted_per_round),
            "lookup_per_round": list(self.lookup_per_round),
            "draft_time_s": self.draft_time_s,
            "total_time_s": self.total_time_s,
            "loop": self.loop,
        }


class DSparkCandidateGenerator(CandidateGenerator):
    """Drafts with a bound `DSparkDrafter` from the target's own hidden states (batch size 1)."""

    requires_model_outputs = True
    model_kwargs_overrides = {"output_hidden_states": True}

    def __init__(
        self,
        drafter: DSparkDrafter,
        target: PreTrainedModel,
        generation_config: GenerationConfig,
        logits_processor: LogitsProcessorList | None = None,
        gating: GatingPolicy | str | None = None,
        static_loop: bool = False,
        **_: Any,
    ):
        self.drafter = drafter
        self.target = target
        self.block_size = drafter.config.block_size
        self.max_length = generation_config.max_length
        self.do_sample = bool(generation_config.do_sample)
        self.logits_processor = LogitsProcessorList(logits_processor or [])  # `markov_draft` fuses what it can
        # a draft vocabulary serves greedy and the warpers; other processors index the whole vocabulary
        self.restrict_vocab = fused_sampling(self.logits_processor) is not None
        self.vocab_size = drafter.config.vocab_size
        eos = getattr(generation_config, "_eos_token_tensor", None)
        self.eos_ids = set(eos.flatten().tolist()) if eos is not None else set()
        cfg = drafter.config
        # Transformers' prompt-lookup knobs turn on lookup rounds (HF's default n-gram is 2; 3 measured better here)
        self.lookup_tokens = generation_config.prompt_lookup_num_tokens or 0
        self.lookup_ngram = generation_config.max_matching_ngram_size or 3
        gating = gating or drafter.gating or cfg.gating
        if isinstance(gating, str):
            longest = self.num_drafting_tokens + 1  # the longest forward a round can ask for
            gating = make_gating(
                gating, cfg.confidence_threshold, target=target, drafter=drafter, max_tokens=longest,
                look_ahead=not self.do_sample,  # greedy: any L is lossless, so the scheduler may look past a step
                static=static_loop,  # the costs of the loop that verifies
            )  # fmt: skip
        self.gating = gating
        self.should_draft = getattr(gating, "should_draft", None)  # a policy may skip drafting that does not pay
        # a cost-aware policy also sizes lookup continuations (the others verify all that was found)
        self.lookup_length = getattr(gating, "best_length", None)
        self.lookup_reached = [0] * self.lookup_tokens  # lookup rounds that verified position k with k-1 accepted
        self.lookup_accepted = [0] * self.lookup_tokens  # ... and accepted position k
        temps = cfg.confidence_temperatures
        self.conf_temps = torch.tensor(temps, device=drafter.device) if temps is not None else None
        self.graphs = self._drafting_graphs()
        self.cache = self.graphs.cache if self.graphs is not None else drafter.new_context_cache()
        self.stats = DSparkStats(block_size=self.num_drafting_tokens)
        drafter.stats = self.stats
        self._started = perf_counter()
        self._pending: tuple[int, int, bool] | None = None  # (drafted, verified, lookup round) until verified

    @property
    def num_drafting_tokens(self) -> int:
        """The most tokens a round can propose (Transformers >= 5.25 sizes the target cache's rollback by it)."""
        return max(self.block_size, self.lookup_tokens)

    def _drafting_graphs(self) -> DraftingGraphs | None:
        """The round as CUDA graphs (`cuda_graphs.py`) where it can be captured: CUDA, the fused kernel, a bounded
        length; $DSPARK_CUDA_GRAPHS=0 turns it off. A capture that fails falls back to eager rounds, saying so."""
        device = self.drafter.device
        if (
            not cuda_graphs.capture_graphs(device)
            or fused_sampling(self.logits_processor) is None
            or resolve_backend(device) != "triton"
            or self.max_length > CUDA_GRAPHS_MAX_LENGTH
        ):
            return None
        try:
            return DraftingGraphs(self, self.max_length, self.num_drafting_tokens + 1)
        except Exception as err:  # noqa: BLE001 - any failure of the fast path falls back to the exact eager one
            warn_once("drafting-capture", f"CUDA-graph drafting unavailable ({err!r}); drafting eagerly")
            return None

    def draft_block(
        self,
        anchor: torch.Tensor,
        positions: torch.Tensor,
        context: list[tuple[torch.Tensor, torch.Tensor]],
        mask: torch.Tensor | None = None,
        barrier: torch.Tensor | None = None,
        prefix_ids: torch.Tensor | None = None,
    ) -> DraftedBlock:
        """Draft γ tokens after `anchor` at `positions` from the context keys/values: backbone, LM-head rows, Markov
        draft. `mask` and `barrier` are the fixed-shape round's (see `DraftingGraphs`); `prefix_ids`, the sequence so
        far, is for logits processors that read it (the eager loop's)."""
        drafter = self.drafter
        hidden = drafter(drafter.block_embeddings(anchor), positions, context, attention_mask=mask)[0]
        base_logits, w2, vocab_ids = drafter.draft_logits(hidden, restrict=self.restrict_vocab)
        base_logits = base_logits.float()
        uniforms = torch.rand(base_logits.shape, device=base_logits.device) if self.do_sample else None
        tokens, q_logits, _, prefix_probs = markov_draft(
            base_logits,
            hidden,
            anchor,
            drafter.markov_weights()[0],
            w2,
            drafter.confidence_head.weight[0],
            drafter.confidence_head.bias,
            self.conf_temps,
            uniforms=uniforms,
            logits_processor=self.logits_processor,
            prefix_ids=prefix_ids,
            vocab_ids=vocab_ids,
            barrier=barrier,
        )
        # lookup is steered by the drafter's most likely first token, never by its sample: a choice between drafter
        # and lookup that looked at the sampled tokens would bias the q they are verified against
        guide = q_logits[:1].argmax(-1)
        guide = vocab_ids[guide] if vocab_ids is not None else guide
        packed = torch.cat([tokens.double(), prefix_probs.double(), guide.double()])
        return DraftedBlock(tokens, q_logits, prefix_probs, vocab_ids, packed)

    def _draft_eager(self, input_ids: torch.LongTensor) -> DraftedBlock:
        verified_len = input_ids.shape[1] - 1
        positions = torch.arange(verified_len, verified_len + self.block_size, device=input_ids.device)[None]
        context = [self.cache.get(i) for i in range(len(self.drafter.layers))]
        return self.draft_block(input_ids[:, -1], positions, context, prefix_ids=input_ids)

    @torch.no_grad()
    def get_candidates(
        self,
        input_ids: torch.LongTensor,
        model_kwargs: dict[str, Any] | None = None,
        model_outputs: Any = None,
        is_first_iteration: bool = False,
        n_last_matches: int = 0,
        **kwargs: Any,
    ) -> tuple[torch.LongTensor, torch.Tensor | None]:
        if is_first_iteration:  # the target prefills first; we draft from its hidden states next call
            if int(input_ids[0, -1]) in self.eos_ids:
                # Transformers 5.17 takes a prompt that ends in EOS for a finished round when nothing is verified
                # and adds no token: verify one guess (any non-EOS token, checked by exact matching) instead
                guess = next(t for t in range(len(self.eos_ids) + 1) if t not in self.eos_ids)
                return torch.cat([input_ids, input_ids.new_tensor([[guess]])], dim=-1), None
            return input_ids, None
        started = perf_counter()
        drafter = self.drafter
        verified_len = input_ids.shape[1] - 1  # the last token (the anchor) has not been through the target yet
        new = verified_len - self.cache.length
        hidden_states = getattr(model_outputs, "hidden_states", None)
        if hidden_states is None or new < 1 or hidden_states[0].shape[1] < new:
            raise RuntimeError(
                "DSpark lost track of the target's verified tokens "
                f"(cache {self.cache.length}, sequence {verified_len}); this is a bug, please report it."
            )
        if self.graphs is not None and new <= self.graphs.max_new:
            self.graphs.append(hidden_states, new)
        else:  # the prompt, or the eager round
            drafter.append_context(self.cache, drafter.fuse_context(hidden_states, new))

        room = self.max_length - input_ids.shape[1] - 1  # the target adds one token of its own
        budget = min(self.block_size, room)
        if budget <= 0 or (self.should_draft is not None and not self.should_draft()):
            # room for the target's own last token only, or drafting does not pay now: look up, else a plain round
            found = self._looked_up(input_ids, room, None)
            self.stats.draft_time_s += perf_counter() - started
            if found:
                return self._verify_lookup(input_ids, found)
            self._pending = (0, 0, False)
            return input_ids, None

        # a whole block is drafted even where the budget is shorter: positions after it do not change those before
        gamma = self.block_size
        block = self.graphs.draft(input_ids[:, -1]) if self.graphs is not None else self._draft_eager(input_ids)
        # one device->host transfer per round: token ids (exact in float64), prefix survival a_k = Π c_i, the guide
        host = block.packed.tolist()
        if min(host[:gamma]) < 0:  # top-k ties ran past the graphed kernel's candidate list: the loop keeps them all
            block = self._draft_eager(input_ids)
            host = block.packed.tolist()
        tokens, q_logits, vocab_ids = block.tokens, block.q_logits, block.vocab_ids
        token_list, prefix_probs = host[:budget], host[gamma : gamma + budget]
        found = self._looked_up(input_ids, room, int(host[-1]))
        self.stats.draft_time_s += perf_counter() - started
        if found:
            return self._verify_lookup(input_ids, found)
        drafted = len(cut_at_eos([int(t) for t in token_list], self.eos_ids))
        length = max(0, min(int(self.gating(prefix_probs[:drafted])), drafted))
        self._pending = (drafted, length, False)
        if length == 0:
            return input_ids, None
        candidates = torch.cat([input_ids, tokens[None, :length].to(input_ids.dtype)], dim=-1)
        q_logits = q_logits[:length]
        if vocab_ids is not None:  # Transformers verifies against q over the whole vocabulary: zero outside
            q_logits = q_logits.new_full((length, self.vocab_size), -float("inf")).index_copy_(1, vocab_ids, q_logits)
        return candidates, q_logits[None]

    def _looked_up(self, input_ids: torch.LongTensor, room: int, first_token: int | None) -> list[int]:
        """The prompt-lookup continuation to verify this round, cut to the budget and at EOS ([]: none).

        Under the scheduler it is cut further to the length that maximises expected tokens per second, with the
        survival of each lookup position estimated from this call's earlier lookup rounds (optimistic until seen:
        1 success in 1 trial). That cut depends only on earlier rounds, never on the tokens verified now."""
        if not self.lookup_tokens or room <= 0:
            return []
        found = lookup_continuation(input_ids[0].tolist(), self.lookup_ngram, first_token)
        found = cut_at_eos(found[: min(self.lookup_tokens, room)], self.eos_ids)
        if found and self.lookup_length is not None:
            survival, prefix_probs = 1.0, []
            for reached, accepted in zip(self.lookup_reached[: len(found)], self.lookup_accepted, strict=False):
                survival *= (accepted + 1) / (reached + 1)
                prefix_probs.append(survival)
            found = found[: self.lookup_length(prefix_probs)[0]]
        return found

    def _verify_lookup(self, input_ids: torch.LongTensor, found: list[int]) -> tuple[torch.LongTensor, None]:
        """No logits go with looked-up drafts: they are deterministic, so Transformers verifies them by matching them
        against the target's own choice (its argmax, or its sample when sampling), which keeps sampling exact too."""
        self._pending = (len(found), len(found), True)
        return torch.cat([input_ids, input_ids.new_tensor(found)[None]], dim=-1), None

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.Tensor, num_matches: int) -> None:
        """Transformers calls this after each verification: record the round."""
        if self._pending is None:
            return
        drafted, verified, looked_up = self._pending
        self._pending = None
        accepted = min(int(num_matches), verified)
        if looked_up:
            for k in range(min(accepted + 1, verified)):
                self.lookup_reached[k] += 1
                self.lookup_accepted[k] += k < accepted
        self.stats.record(drafted, verified, accepted, looked_up)
        self.stats.total_time_s = perf_counter() - self._started


# ----- routing inside generate() -----------------------------------------------------------------------------------


def _is_dspark(model: Any) -> bool:
    return getattr(model, "_dspark_candidate_generator", None) is not None


def validate_request(target: PreTrainedModel, args: tuple, kwargs: dict[str, Any]) -> None:
    """Refuse, before any work, what the DSpark path cannot do losslessly."""
    config = kwargs.get("generation_config") or target.generation_config

    def setting(name: str) -> Any:
        return kwargs.get(name, getattr(config, name, None))

    inputs = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
    if inputs is None:
        raise ValueError("DSpark drafting needs `input_ids` (prompts given only as `inputs_embeds` are not supported).")
    if inputs.shape[0] != 1:
        raise ValueError(
            f"DSpark drafting inside generate() supports batch size 1 (Transformers' assisted decoding loop is "
            f"single-sequence); got batch size {inputs.shape[0]}. Call generate() once per prompt."
        )
    if (setting("num_beams") or 1) > 1:
        raise ValueError(
            "DSpark drafting supports greedy decoding and sampling, not beam search: set num_beams=1, or drop "
            "assistant_model to run beam search with the target alone."
        )
    if (setting("num_return_sequences") or 1) > 1:
        raise ValueError("DSpark drafting returns one sequence per call: set num_return_sequences=1.")
    if setting("penalty_alpha") and (setting("top_k") or 0) > 1 and not setting("do_sample"):
        raise ValueError("Contrastive search (penalty_alpha) is not supported with DSpark drafting.")
    if setting("cache_implementation") in ("static", "hybrid", "sliding_window", "offloaded_static"):
        raise ValueError("DSpark drafting needs a dynamic (croppable) target cache; drop cache_implementation.")
    mask = kwargs.get("attention_mask")
    if mask is not None and not bool(mask.bool().all()):
        raise ValueError("DSpark drafting does not support padded prompts: pass the prompt without padding.")


def device_usable(device: torch.device) -> bool:
    """Whether work can still run on `device` after an error: on CUDA, an illegal memory access or a failed kernel
    leaves the context unusable for the rest of the process; a refused capture or a Python error does not."""
    if device.type != "cuda":
        return True
    try:
        torch.cuda.synchronize(device)
    except Exception:  # noqa: BLE001 - whatever it raises, the device cannot be trusted
        return False
    return True


def install_generate_routing() -> None:
    """Route `generate(..., assistant_model=<DSparkDrafter>)` to `DSparkCandidateGenerator`. Idempotent.

    Two thin wrappers on `GenerationMixin`: `generate` validates the request and binds the drafter to the target;
    `_get_candidate_generator` hands back the drafter's own generator. Any other assistant goes through untouched.
    """
    from transformers.generation.utils import GenerationMixin

    if getattr(GenerationMixin._get_candidate_generator, "_dspark_routed", False):
        return
    original_get = GenerationMixin._get_candidate_generator
    original_generate = GenerationMixin.generate
    signature = inspect.signature(original_get)

    @functools.wraps(original_get)
    def _get_candidate_generator(self, *args, **kwargs):
        arguments = signature.bind(self, *args, **kwargs).arguments
        assistant = arguments.get("assistant_model")
        if not _is_dspark(assistant):
            return original_get(self, *args, **kwargs)
        return assistant._dspark_candidate_generator(
            target=self,
            generation_config=arguments["generation_config"],
            logits_processor=arguments.get("logits_processor"),
        )

    @functools.wraps(original_generate)
    def generate(self, *args, **kwargs):
        assistant = kwargs.get("assistant_model")
        if not _is_dspark(assistant):
            return original_generate(self, *args, **kwargs)
        gating = kwargs.pop("gating", None)
        validate_request(self, args, kwargs)
        assistant.bind(self)
        previous, assistant.gating = assistant.gating, gating or assistant.gating
        try:
            from .static_loop import speculative_generate, static_loop_request

            with onednn_linears(self, assistant):  # CPU fp32: cheaper multi-token forwards (cpu_linears.py)
                request = static_loop_request(self, args, kwargs)
                if request is not None:
                    try:
                        return speculative_generate(self, assistant, *request)
                    except Exception as err:
                        if not device_usable(self.device):
                            raise  # the CUDA context is lost: nothing in this process can run on it any more
                        warn_once("static-loop", f"the static loop failed ({err!r}); running Transformers' loop")
                        self._dspark_static_target = None  # the next call builds its cache and graphs afresh
                return original_generate(self, *args, **kwargs)
        finally:
            assistant.gating = previous

    _get_candidate_generator._dspark_routed = True
    GenerationMixin._get_candidate_generator = _get_candidate_generator
    GenerationMixin.generate = generate
