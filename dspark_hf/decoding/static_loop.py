"""Our own speculative loop, on the static target (`static_target.py`): a few tensor ops and one host sync a round.

Transformers' assisted loop runs the target eagerly on a dynamic cache, and its bookkeeping adds ~5 ms a round on an
H200. `generate(..., assistant_model=drafter)` takes this loop instead when the request is one it reproduces exactly
(greedy, or sampling with temperature / top-k / top-p; no streamer, stopping criteria, extra processors or dict
outputs) and the target runs on CUDA (`env.py`: $DSPARK_STATIC_LOOP). Drafting, the policy, prompt lookup and the
acceptance rules are `round.py`'s either way, so both loops are lossless in the same way.
"""

from __future__ import annotations

import copy
from time import perf_counter
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .. import env
from ..targets import synchronize
from . import compat
from .policies import GatingPolicy
from .round import Drafting, DSparkStats, cut_at_eos, greedy_accept, speculative_sampling
from .static_target import StaticTarget

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..modeling_dspark import DSparkDrafter

# generation settings this loop reproduces; any other non-default one sends the call through Transformers' loop
SUPPORTED_SETTINGS = {
    "max_length", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "num_beams",
    "num_return_sequences", "use_cache", "eos_token_id", "pad_token_id", "bos_token_id",
    "prompt_lookup_num_tokens", "max_matching_ngram_size",
    "num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold",
}  # fmt: skip
SUPPORTED_KWARGS = {"input_ids", "inputs", "attention_mask", "assistant_model", "generation_config"}


def wants_static_loop(target: PreTrainedModel) -> bool:
    """$DSPARK_STATIC_LOOP: "0" never, "1" on any device (uncaptured off CUDA: how the tests run it on the CPU),
    unset: on CUDA unless $DSPARK_CUDA_GRAPHS=0."""
    choice = env.static_loop_choice()
    if choice in ("0", "1"):
        return choice == "1"
    return target.device.type == "cuda" and env.cuda_graphs_enabled()


def _changed_settings(config: GenerationConfig, defaults: dict[str, Any]) -> set[str]:
    """Fill the unset fields with Transformers' defaults (as generate() does) and return the ones changed from them."""
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
    defaults = compat.default_generation_params()
    if not wants_static_loop(target) or len(args) > 1 or defaults is None:
        return None
    config = copy.deepcopy(kwargs.get("generation_config") or target.generation_config)
    fields = {k: v for k, v in kwargs.items() if k not in SUPPORTED_KWARGS}
    if config.update(**fields) or _changed_settings(config, defaults) - SUPPORTED_SETTINGS:
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
    compat.set_eos_ids(config, eos, ids.device)
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


class RoundClock:
    """Where a round's time goes, phase by phase: the device synchronised at each phase's end, so the phases add up
    to the round (and each costs a synchronisation more than an untimed round: for profiling, not for speed)."""

    def __init__(self, device: torch.device, phases: dict[str, list[float]]):
        self.device, self.phases = device, phases
        self.started = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self.started = perf_counter()

    def lap(self, phase: str) -> None:
        synchronize(self.device)
        now = perf_counter()
        seconds, times = self.phases.get(phase, (0.0, 0))
        self.phases[phase] = [seconds + now - self.started, times + 1]
        self.started = now


class NoClock:
    """The untimed round: nothing to do at each phase."""

    def start(self) -> None:
        pass

    def lap(self, phase: str) -> None:
        pass


@torch.no_grad()
def speculative_generate(
    target: PreTrainedModel,
    drafter: DSparkDrafter,
    input_ids: torch.LongTensor,
    config: GenerationConfig,
    policy: GatingPolicy,
    time_rounds: bool = False,
) -> tuple[torch.LongTensor, DSparkStats]:
    """What `target.generate(input_ids, assistant_model=drafter, ...)` returns, by the static loop (batch size 1),
    and the call's statistics; `time_rounds`: with where the rounds' time went (`DSparkStats.round_phases`)."""
    processors = warpers(config)
    eos = compat.eos_ids(config)
    drafting = Drafting(
        drafter, policy, config.max_length, eos, do_sample=config.do_sample, logits_processor=processors,
        lookup_tokens=config.prompt_lookup_num_tokens or 0, lookup_ngram=config.max_matching_ngram_size or 3,
    )  # fmt: skip
    static = StaticTarget.for_target(target, config.max_length + drafting.num_drafting_tokens + 1)

    def choose(logits: torch.Tensor) -> torch.Tensor:  # the target's own choice at each row: (rows,)
        if not config.do_sample:
            return logits.argmax(-1)
        return torch.multinomial(processors(ids, logits.float()).softmax(-1), 1)[:, 0]

    ids = input_ids
    logits, hidden = static.forward(ids, 0)
    new = choose(logits[-1:]).tolist()
    ids = torch.cat([ids, ids.new_tensor([new])], dim=-1)
    clock = RoundClock(ids.device, drafting.stats.round_phases) if time_rounds else NoClock()
    while ids.shape[1] < config.max_length and new[-1] not in eos:
        clock.start()
        drafting.observe(hidden, ids.shape[1] - 1)
        clock.lap("keep context")
        proposal = drafting.propose(ids)
        drafts = proposal.device_tokens if proposal is not None else ids.new_empty(0)
        candidates = torch.cat([ids[0], drafts])[None]
        clock.lap("draft")
        logits, hidden = static.forward(candidates[:, ids.shape[1] - 1 :], ids.shape[1] - 1)
        clock.lap(f"verify {candidates.shape[1] - ids.shape[1] + 1}")
        if proposal is not None and proposal.q_logits is not None:
            new = speculative_sampling(drafts, proposal.q_logits, processors(candidates, logits.float())).tolist()
        else:  # drafts kept while they equal the target's own choice, then its choice after the last one kept
            chosen = choose(logits).tolist()
            new = chosen[: greedy_accept(chosen, proposal.tokens if proposal is not None else []) + 1]
        new = cut_at_eos(new[: config.max_length - ids.shape[1]], eos)
        ids = torch.cat([ids, ids.new_tensor([new])], dim=-1)
        drafting.record(len(new) - 1)
        clock.lap("accept")
    drafting.stats.loop = "static"
    return ids, drafting.stats
