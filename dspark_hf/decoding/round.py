"""One DSpark round, the only place its rules live: draft a block, cut it, choose how much to verify, accept, record.

A round, as `Drafting` runs it for either loop (Transformers' assisted loop through `candidates.py`, or ours in
`static_loop.py`):
  1. `observe`: keep the target's features of the newly verified tokens for the drafter's context cache;
  2. `propose`: unless the policy says drafting does not pay now (`should_draft`), append what was kept to the
     context cache (all rounds since the last draft at once), then one backbone pass over the
     anchor-first block and the Markov draft (`draft_block`: one fused Triton launch on CUDA, the PyTorch loop
     elsewhere; replayed from two CUDA graphs where it can be, `DraftingGraphs`); cut at EOS and at the length budget
     (`room`); prompt lookup may take the round instead (`lookup_continuation`); the policy picks the prefix L;
  3. the loop verifies the proposal with one target forward and accepts by `greedy_accept` (greedy drafts and every
     lookup draft: kept while they equal the target's own choice) or `speculative_sampling` (sampled drafts);
  4. `record`: the round's figures go into `DSparkStats`, which the loop returns.
`replay_rounds` (evaluation) walks the same rules over a known greedy continuation.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from transformers.generation.logits_process import LogitsProcessorList

from .. import notices
from ..kernels.cpu_linears import linear, packs_made
from ..kernels.markov import fused_sampling, markov_draft, resolve_backend
from .graphs import GraphSet, capture_graphs, tensor_identity
from .policies import GatingPolicy

if TYPE_CHECKING:
    from ..modeling_dspark import DSparkContextCache, DSparkDrafter

CUDA_GRAPHS_MAX_LENGTH = 16384  # beyond this, attending to the whole preallocated context would cost too much
GRAPH_CAPACITY_STEP = 1024  # drafting graphs are captured for a context of a multiple of this, and kept across calls
FORECAST_PRIOR = 2.0  # the drafter's forecast is trusted as if it had been right about 2 drafts already
GRAPH_MIN_ROWS = 32  # appends of up to this many positions share one buffer (prompt lookup's longer rounds included)


# ----- statistics --------------------------------------------------------------------------------------------------


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


@dataclass(repr=False)
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
    fallbacks: list[str] = field(default_factory=list)  # fast paths that failed during the call (notices.fallback)
    captures: int = 0  # CUDA graphs captured during the call (none once the graphs of its shapes exist)
    # where the static loop's rounds spent their time, when asked for (`generate(..., time_rounds=True)`):
    # phase -> [seconds, times], the verification forward per number of tokens ("verify 3")
    round_phases: dict[str, list[float]] = field(default_factory=dict)

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

    def __repr__(self) -> str:
        lookup = f", {self.lookup_rounds} by lookup" if self.lookup_rounds else ""
        fallbacks = f", fell back: {', '.join(self.fallbacks)}" if self.fallbacks else ""
        return (
            f"DSparkStats(τ={self.tau:.2f}, {self.rounds} rounds{lookup}, {self.accepted_tokens}/"
            f"{self.verified_tokens} drafts accepted, {self.loop} loop{fallbacks}, {self.total_time_s:.2f} s)"
        )

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
            "fallbacks": list(self.fallbacks),
            "captures": self.captures,
        }


# ----- what may be verified ----------------------------------------------------------------------------------------


def room(max_length: int, length: int) -> int:
    """The length budget: drafts a round may verify on a sequence of `length` tokens, since the target adds one
    token of its own after them and the sequence must end by `max_length`."""
    return max_length - length - 1


def cut_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """Nothing after EOS can be kept, so never verify it."""
    return tokens[: next((k + 1 for k, t in enumerate(tokens) if t in eos_ids), len(tokens))]


def lookup_continuation(ids: Sequence[int], max_ngram: int = 3, first_token: int | None = None) -> list[int]:
    """Prompt lookup guided by the drafter: what followed an earlier occurrence of the sequence's last tokens.

    Candidates are the earlier positions whose last 1..`max_ngram` tokens equal the sequence's last ones. One whose
    continuation starts with `first_token` (the drafter's first draft) wins, longest match first, then the latest;
    failing that, the longest match of at least two tokens, then the latest; else [] (draft with the drafter). This
    mix beat both the drafter alone and Transformers' unguided first-match lookup on the shipped SmolLM2 drafter
    (docs/results.md). The continuation runs to the end of the sequence: the caller cuts it."""
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


# ----- acceptance --------------------------------------------------------------------------------------------------


def greedy_accept(chosen: Sequence[int], drafts: Sequence[int]) -> int:
    """How many drafts verification keeps when each must equal the target's own choice at its position (greedy
    drafts, and every lookup draft, sampled or not): `chosen` holds that choice at each draft and after the last."""
    matched = zip(chosen, drafts, strict=False)
    return next((k for k, (c, d) in enumerate(matched) if c != d), min(len(chosen), len(drafts)))


def speculative_sampling(drafts: torch.Tensor, q_logits: torch.Tensor, p_logits: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 of Leviathan et al. (2023), as Transformers runs it: keep draft i while a uniform draw is below
    p_i / q_i (strictly: a draft with p = 0 is never kept), then sample from norm(max(p - q, 0)) at the first
    rejection, or from p after the last draft when all were kept. drafts (L,), q_logits (L, V), p_logits (L + 1, V)
    -> the tokens to append."""
    q, p = q_logits.float().softmax(-1), p_logits.softmax(-1)
    rows = torch.arange(drafts.shape[0], device=drafts.device)
    kept = torch.rand(rows.shape, device=p.device) < p[rows, drafts] / q[rows, drafts]
    n = int(kept.long().cumprod(0).sum())
    last = p[n] if n == drafts.shape[0] else (p[n] - q[n]).clamp_min(0)
    return torch.cat([drafts[:n], torch.multinomial(last / last.sum(), 1)])


# ----- drafting a block --------------------------------------------------------------------------------------------


class DraftSettings(NamedTuple):
    """How a call drafts: sampled or greedy, the logits processors, whether over the draft vocabulary only (it serves
    greedy and the fusable warpers; other processors index the whole vocabulary), the calibrated temperatures."""

    do_sample: bool
    logits_processor: LogitsProcessorList
    restrict_vocab: bool
    conf_temps: torch.Tensor | None

    @classmethod
    def of(cls, drafter: DSparkDrafter, do_sample: bool, logits_processor: LogitsProcessorList | None) -> DraftSettings:
        processors = LogitsProcessorList(logits_processor or [])
        temps = drafter.config.confidence_temperatures
        temps = torch.tensor(temps, device=drafter.device) if temps is not None else None
        return cls(bool(do_sample), processors, fused_sampling(processors) is not None, temps)

    def graph_key(self) -> tuple:
        """What a captured drafting graph bakes in of these settings."""
        temps = None if self.conf_temps is None else tuple(self.conf_temps.tolist())
        fused = fused_sampling(self.logits_processor)
        return self.do_sample, tuple(sorted((fused or {}).items())), self.restrict_vocab, temps


class DraftedBlock(NamedTuple):
    """One drafted block: tokens (γ,), the logits q each token was drawn from (γ, V' over the draft vocabulary or
    V), prefix survival a_k (γ,), the draft vocabulary's token ids (None: the whole vocabulary), and `packed`: tokens,
    survival and the drafter's most likely first token in one float64 vector (γ + γ + 1,), for one host copy."""

    tokens: torch.Tensor
    q_logits: torch.Tensor
    prefix_probs: torch.Tensor
    vocab_ids: torch.Tensor | None
    packed: torch.Tensor


def draft_block(
    drafter: DSparkDrafter,
    settings: DraftSettings,
    anchor: torch.Tensor,
    positions: torch.Tensor,
    context: list[tuple[torch.Tensor, torch.Tensor]],
    mask: torch.Tensor | None = None,
    barrier: torch.Tensor | None = None,
    prefix_ids: torch.Tensor | None = None,
    stop: Callable[[list[float]], bool] | None = None,
) -> DraftedBlock:
    """Draft γ tokens after `anchor` at `positions` from the context keys/values: backbone, LM-head rows, Markov
    draft. `mask` and `barrier` are the fixed-shape round's (`DraftingGraphs`); `prefix_ids`, the sequence so far, is
    for logits processors that read it, and `stop` may end the block early (see `markov_draft_reference`): the eager
    round's."""
    hidden = drafter(drafter.block_embeddings(anchor), positions, context, attention_mask=mask)[0]
    base_logits, w2, vocab_ids = drafter.draft_logits(hidden, restrict=settings.restrict_vocab, linear=linear)
    base_logits = base_logits.float()
    uniforms = torch.rand(base_logits.shape, device=base_logits.device) if settings.do_sample else None
    tokens, q_logits, _, prefix_probs = markov_draft(
        base_logits,
        hidden,
        anchor,
        drafter.markov_weights()[0],
        w2,
        drafter.confidence_head.weight[0],
        drafter.confidence_head.bias,
        settings.conf_temps,
        uniforms=uniforms,
        logits_processor=settings.logits_processor,
        prefix_ids=prefix_ids,
        vocab_ids=vocab_ids,
        barrier=barrier,
        stop=stop,
    )
    # lookup is steered by the drafter's most likely first token, never by its sample: a choice between drafter
    # and lookup that looked at the sampled tokens would bias the q they are verified against
    guide = q_logits[:1].argmax(-1)
    guide = vocab_ids[guide] if vocab_ids is not None else guide
    packed = torch.cat([tokens.double(), prefix_probs.double(), guide.double()])
    return DraftedBlock(tokens, q_logits, prefix_probs, vocab_ids, packed)


class DraftingGraphs:
    """A drafting round as two CUDA graphs — append the newly verified positions to the context cache; draft a block
    from it — so a round costs two replays and three small copies instead of ~150 launches.

    What makes the round capturable: the context cache is allocated up front (`capacity`) and never moves; what
    changes from round to round (the cache length, the anchor, the new features) is copied into fixed device buffers
    before each replay; the draft layers attend to the whole allocation under a mask of the valid positions; an
    append always processes `max_new` rows (rows past the newly verified ones are junk that the next append
    overwrites and the mask hides); and the Markov kernel's grid barrier gets its own counter, zeroed inside the
    graph. `capture=False` runs the same fixed-shape steps eagerly (the CPU tests compare them with the eager round).

    One object per drafter, kept on it across calls (`drafting_graphs`): its buffers serve every call that fits them,
    and its graphs are captured once per append width (`max_new`) and per draft settings, so a call whose shapes were
    seen before captures nothing. `use` selects the call's pair.
    """

    def __init__(self, drafter: DSparkDrafter, capacity: int, rows: int, capture: bool = True):
        config = drafter.config
        device, gamma = drafter.device, config.block_size
        # weakly: the drafter keeps these graphs across calls, and a cycle would leave their destruction to the garbage
        # collector, whenever it runs (see graphs.py)
        self.drafter = weakref.proxy(drafter)
        self.capacity, self.rows = capacity, rows
        self.cache = drafter.new_context_cache(capacity + rows)  # junk rows of the last append still fit
        width = len(config.target_layer_ids) * config.hidden_size
        self.features = torch.zeros(1, rows, width, dtype=drafter.dtype, device=device)
        self.start = torch.zeros((), dtype=torch.long, device=device)  # cache length before an append
        self.length = torch.zeros((), dtype=torch.long, device=device)  # cache length when drafting
        self.anchor = torch.zeros(1, dtype=torch.long, device=device)
        # the kernel's own grid-barrier counter (the shared one's host-side count cannot be replayed)
        self.barrier = torch.zeros(1, dtype=torch.int32, device=device) if resolve_backend(device) == "triton" else None
        self.offsets = torch.arange(gamma, device=device)
        self.slots = torch.arange(self.cache.capacity, device=device)
        self.block_visible = torch.ones(gamma, dtype=torch.bool, device=device)
        self.identity = weights_identity(drafter)  # the graphs replay these tensors' addresses
        self.graphs = GraphSet(device) if capture else None
        self.settings: DraftSettings | None = None  # the call's, set by `use`
        self.max_new = 0
        self.keys: tuple[tuple, tuple] = ((), ())  # its append and draft graphs

    def fits(self, drafter: DSparkDrafter, capacity: int, rows: int) -> bool:
        """Whether a call of this context capacity and append width can use these buffers and graphs."""
        return self.capacity >= capacity and self.rows >= rows and self.identity == weights_identity(drafter)

    def use(self, settings: DraftSettings, max_new: int) -> DraftingGraphs:
        """Start a call that drafts with `settings` and appends up to `max_new` positions a round: an empty context,
        and the call's two graphs, captured now if this is their first call (a failure raises)."""
        self.settings, self.max_new = settings, max_new
        self.keys = ("append", max_new), ("draft", settings.graph_key())
        if self.graphs is not None:
            for key, step in zip(self.keys, (self._append_step, self._draft_step), strict=True):
                if key not in self.graphs:
                    self.cache.length = 0
                    self.graphs.capture(key, step)
        self.cache.length = 0  # the warm-ups wrote junk only
        return self

    def _append_step(self) -> None:
        rows = self.features[:, : self.max_new]
        self.drafter.append_context(self.cache, self.drafter.fuse_features(rows), start=self.start)

    def _draft_step(self) -> DraftedBlock:
        visible = torch.cat([self.slots < self.length, self.block_visible])[None, None, None]
        context = list(zip(self.cache.keys, self.cache.values, strict=True))
        positions = (self.length + self.offsets)[None]
        return draft_block(
            self.drafter, self.settings, self.anchor, positions, context, mask=visible, barrier=self.barrier
        )

    def append(self, features: torch.Tensor) -> None:
        """Append the target's features (`context_features`, at most `max_new` positions), as `append_context` does."""
        new = features.shape[1]
        self.features[:, :new].copy_(features)
        self.start.fill_(self.cache.length)
        if self.graphs is None:
            self._append_step()
        else:
            self.graphs.replay(self.keys[0])
        self.cache.advance(new)

    def draft(self, anchor: torch.Tensor) -> DraftedBlock:
        """A block from the anchor and the whole cache. The tensors it returns are overwritten by the next draft."""
        self.anchor.copy_(anchor)
        self.length.fill_(self.cache.length)
        if self.graphs is None:
            return self._draft_step()
        return self.graphs.replay(self.keys[1])


def weights_identity(drafter: DSparkDrafter) -> tuple:
    """The drafter's weights and the target's embedding and LM head it shares, as a graph replays them."""
    return tensor_identity([*drafter.parameters(), *(module.weight for module in drafter._shared())])


def drafting_graphs(
    drafter: DSparkDrafter, settings: DraftSettings, max_length: int, max_new: int
) -> DraftingGraphs | None:
    """The drafting round as CUDA graphs where it can be captured (CUDA, the fused kernel, a bounded length), from the
    drafter's kept `DraftingGraphs` when the call fits it (else a larger one replaces it); None: draft eagerly. A
    capture that fails leaves this call on eager rounds, counted (`notices.fallback`)."""
    device = drafter.device
    if (
        not capture_graphs(device)
        or fused_sampling(settings.logits_processor) is None
        or resolve_backend(device) != "triton"
        or max_length > CUDA_GRAPHS_MAX_LENGTH
    ):
        return None
    capacity = -(-max_length // GRAPH_CAPACITY_STEP) * GRAPH_CAPACITY_STEP
    kept = getattr(drafter, "_dspark_drafting_graphs", None)
    try:
        if kept is None or not kept.fits(drafter, capacity, max_new):
            rows = max(max_new, GRAPH_MIN_ROWS)
            if kept is not None and kept.identity == weights_identity(drafter):  # grow: never shrink below it
                capacity, rows = max(capacity, kept.capacity), max(rows, kept.rows)
            drafter._dspark_drafting_graphs = kept = None  # the old graphs and cache go before new ones are allocated
            kept = DraftingGraphs(drafter, capacity, rows)
            drafter._dspark_drafting_graphs = kept
        return kept.use(settings, max_new)
    except Exception as err:  # noqa: BLE001 - any failure of the fast path falls back to the exact eager one
        drafter._dspark_drafting_graphs = None  # the next call starts afresh
        notices.fallback("drafting-capture", f"CUDA-graph drafting unavailable ({err!r}); drafting eagerly")
        return None


# ----- a call's rounds ---------------------------------------------------------------------------------------------


class Proposal(NamedTuple):
    """What a round sends to the target: `tokens` (host) and `device_tokens` (L,), the logits q they were sampled
    from over the whole vocabulary (L, V; None for greedy and lookup drafts, which are verified by matching), and
    whether prompt lookup found them."""

    tokens: list[int]
    device_tokens: torch.Tensor
    q_logits: torch.Tensor | None
    looked_up: bool


def one_off_work() -> tuple[int, int]:
    """Counts of work done once and then kept: oneDNN weight packs, CUDA-graph captures (a verification length's graph
    is captured the first time a round verifies that many tokens). A round that did some took longer than rounds
    take, so the policy does not judge drafting by it."""
    return packs_made(), notices.capture_count()


class Drafting:
    """The drafting side of one `generate()` call (batch size 1): the context cache or its graphs, the policy,
    prompt lookup's record, the statistics. Each round: `observe`, `propose`, the loop verifies, `record`."""

    def __init__(
        self,
        drafter: DSparkDrafter,
        policy: GatingPolicy,
        max_length: int,
        eos_ids: set[int],
        do_sample: bool = False,
        logits_processor: LogitsProcessorList | None = None,
        lookup_tokens: int = 0,
        lookup_ngram: int = 3,
    ):
        self.drafter = drafter
        self.block_size = drafter.config.block_size
        self.vocab_size = drafter.config.vocab_size
        self.max_length = max_length
        self.eos_ids = eos_ids
        self.settings = DraftSettings.of(drafter, do_sample, logits_processor)
        self.lookup_tokens, self.lookup_ngram = lookup_tokens, lookup_ngram
        self.policy = policy
        self.should_draft = getattr(policy, "should_draft", None)  # a policy may skip drafting that does not pay
        # a cost-aware policy also sizes lookup continuations (the others verify all that was found)
        self.lookup_length = getattr(policy, "best_length", None)
        self.observe_round = getattr(policy, "observe", None)  # ... and may watch what rounds take
        self.settled = getattr(policy, "settled", None)  # ... and say when later drafts would not be verified
        # this call's record, which corrects the estimates the policy sees (from earlier rounds only, so sampling
        # stays exact): drafts accepted against the drafter's own forecast of them, and lookup drafts accepted against
        # lookup drafts reached (verified with every draft before them accepted). Both start from a small prior.
        self.drafts_accepted, self.drafts_forecast = FORECAST_PRIOR, FORECAST_PRIOR
        self.lookup_accepted, self.lookup_reached = 1, 1
        self.graphs = drafting_graphs(drafter, self.settings, max_length, self.num_drafting_tokens + 1)
        self.cache: DSparkContextCache = self.graphs.cache if self.graphs is not None else drafter.new_context_cache()
        self._held: list[torch.Tensor] = []  # features of verified positions not yet in the cache (`observe`)
        self._seen = 0  # positions observed: those in the cache and those held
        self.stats = DSparkStats(block_size=self.num_drafting_tokens)
        self._started = self._last_record = perf_counter()
        self._one_offs = one_off_work()
        self._pending: tuple[int, int, bool, float] | None = None  # (drafted, verified, lookup round, forecast)
        self._drafting_ran = False  # this round drafted a block (a lookup round may not have)

    @property
    def num_drafting_tokens(self) -> int:
        """The most tokens a round can propose."""
        return max(self.block_size, self.lookup_tokens)

    def observe(self, hidden_states: tuple[torch.Tensor, ...], verified_len: int) -> None:
        """Keep the target's features of the positions verified since the last round (the first ones of
        `hidden_states`) for the drafter's context cache. They go in when the generator next drafts (`_catch_up`), all
        at once: while drafting waits, plain rounds append nothing."""
        new = verified_len - self._seen
        if hidden_states is None or new < 1 or hidden_states[0].shape[1] < new:
            raise RuntimeError(
                "DSpark lost track of the target's verified tokens "
                f"(seen {self._seen}, sequence {verified_len}); this is a bug, please report it."
            )
        self._held.append(self.drafter.context_features(hidden_states, new))  # a copy: replays overwrite the states
        self._seen = verified_len

    def _catch_up(self) -> None:
        """Append the held features to the context cache in one step (a graph replay where it fits)."""
        if not self._held:
            return
        features = self._held[0] if len(self._held) == 1 else torch.cat(self._held, dim=1)
        self._held = []
        if self.graphs is not None and features.shape[1] <= self.graphs.max_new:
            self.graphs.append(features)
        else:  # the prompt, a long wait, or the eager round
            self.drafter.append_context(self.cache, self.drafter.fuse_features(features))

    def _draft_eager(self, input_ids: torch.LongTensor) -> DraftedBlock:
        verified_len = input_ids.shape[1] - 1
        positions = torch.arange(verified_len, verified_len + self.block_size, device=input_ids.device)[None]
        context = [self.cache.get(i) for i in range(len(self.drafter.layers))]
        stop = None
        if self.settled is not None and input_ids.device.type == "cpu":  # each check reads the survivals on the host
            stop = lambda prefix_probs: self.settled(self.corrected(prefix_probs))  # noqa: E731
        return draft_block(
            self.drafter, self.settings, input_ids[:, -1], positions, context, prefix_ids=input_ids, stop=stop
        )

    @torch.no_grad()
    def propose(self, input_ids: torch.LongTensor) -> Proposal | None:
        """The drafts to verify after `input_ids` (whose last token, the anchor, the target has not seen yet); None:
        a plain one-token round."""
        started = perf_counter()
        space = room(self.max_length, input_ids.shape[1])
        budget = min(self.block_size, space)
        self._drafting_ran = False
        if budget <= 0 or (self.should_draft is not None and not self.should_draft()):
            # room for the target's own token only, or drafting does not pay now: look up, else a plain round
            found = self._looked_up(input_ids, space, None)
            self.stats.draft_time_s += perf_counter() - started
            return self._lookup_proposal(input_ids, found) if found else self._plain()

        # a whole block is drafted even where the budget is shorter (positions after it do not change those before),
        # on the CPU only until the policy has settled how many drafts it verifies
        self._catch_up()
        block = self.graphs.draft(input_ids[:, -1]) if self.graphs is not None else self._draft_eager(input_ids)
        self._drafting_ran = True
        # one device->host transfer per round: token ids (exact in float64), prefix survival a_k = Π c_i, the guide
        host = block.packed.tolist()
        if min(host[: block.tokens.shape[0]]) < 0:  # top-k ties ran past the graphed kernel's candidate list: the
            block = self._draft_eager(input_ids)  # loop keeps them all
            host = block.packed.tolist()
        gamma = block.tokens.shape[0]  # the positions drafted
        found = self._looked_up(input_ids, space, int(host[-1]))
        self.stats.draft_time_s += perf_counter() - started
        if found:
            return self._lookup_proposal(input_ids, found)
        drafted = len(cut_at_eos([int(t) for t in host[: min(budget, gamma)]], self.eos_ids))
        forecast = host[gamma : gamma + drafted]
        length = max(0, min(int(self.policy(self.corrected(forecast))), drafted))
        self._pending = (drafted, length, False, sum(forecast[:length]))
        if length == 0:
            return None
        q_logits = None
        if self.settings.do_sample:
            q_logits = block.q_logits[:length]
            if block.vocab_ids is not None:  # verification reads q over the whole vocabulary: zero outside
                whole = q_logits.new_full((length, self.vocab_size), -float("inf"))
                q_logits = whole.index_copy_(1, block.vocab_ids, q_logits)
        tokens = [int(t) for t in host[:length]]
        return Proposal(tokens, block.tokens[:length].to(input_ids.dtype), q_logits, False)

    def corrected(self, prefix_probs: list[float]) -> list[float]:
        """The drafter's prefix survival a_k scaled by how its forecasts fared in this call so far: its calibration
        holds for the data it was calibrated on, not for every prompt and temperature (sampled drafts survive less
        often than greedy ones), and a policy that trusts an optimistic forecast drafts where drafting does not pay."""
        scale = self.drafts_accepted / self.drafts_forecast
        return [min(1.0, a * scale) for a in prefix_probs]

    def _plain(self) -> None:
        self._pending = (0, 0, False, 0.0)
        return None

    def _looked_up(self, input_ids: torch.LongTensor, budget: int, first_token: int | None) -> list[int]:
        """The prompt-lookup continuation to verify this round, cut to the budget and at EOS ([]: none).

        Under a cost-aware policy it is cut further to the length that maximises expected tokens per second, with
        each lookup draft expected to survive, given those before it did, as often as this call's earlier ones did
        (optimistic until seen: 1 success in 1 trial). That cut depends only on earlier rounds, never on the tokens
        verified now."""
        if not self.lookup_tokens or budget <= 0:
            return []
        found = lookup_continuation(input_ids[0].tolist(), self.lookup_ngram, first_token)
        found = cut_at_eos(found[: min(self.lookup_tokens, budget)], self.eos_ids)
        if found and self.lookup_length is not None:
            survival = self.lookup_accepted / self.lookup_reached
            found = found[: self.lookup_length([survival**k for k in range(1, len(found) + 1)])[0]]
        return found

    def _lookup_proposal(self, input_ids: torch.LongTensor, found: list[int]) -> Proposal:
        """Looked-up drafts are deterministic: verification matches them against the target's own choice (its argmax,
        or its sample when sampling), which keeps sampling exact too."""
        self._pending = (len(found), len(found), True, 0.0)
        return Proposal(found, input_ids.new_tensor(found), None, True)

    def record(self, accepted: int) -> None:
        """After verification: the round kept `accepted` of its drafts."""
        now, one_offs = perf_counter(), one_off_work()
        seconds, self._last_record = now - self._last_record, now  # this round's wall clock
        one_off, self._one_offs = one_offs != self._one_offs, one_offs  # not what a round costs: see one_off_work
        if self._pending is None:
            return
        drafted, verified, looked_up, forecast = self._pending
        self._pending = None
        accepted = min(int(accepted), verified)
        if looked_up:
            self.lookup_reached += min(accepted + 1, verified)
            self.lookup_accepted += accepted
        else:
            self.drafts_forecast += forecast
            self.drafts_accepted += accepted
        self.stats.record(drafted, verified, accepted, looked_up)
        self.stats.total_time_s = now - self._started
        if self.observe_round is not None and self.stats.rounds > 1 and not one_off:  # round 1 may hold the prefill
            self.observe_round(verified + 1, seconds, drafted=self._drafting_ran)
