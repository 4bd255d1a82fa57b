"""The adapter to Transformers' assisted-decoding loop: a `CandidateGenerator` whose rounds are `round.Drafting`'s.

Transformers' loop runs the target (with hidden states, `model_kwargs_overrides`), verifies what `get_candidates`
returns by its own rules, and reports how many drafts it kept through `update_candidate_strategy`.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from transformers.generation.candidate_generator import CandidateGenerator
from transformers.generation.logits_process import LogitsProcessorList

from . import compat
from .policies import GatingPolicy
from .round import Drafting

if TYPE_CHECKING:
    from transformers import GenerationConfig

    from ..modeling_dspark import DSparkDrafter


class DSparkCandidateGenerator(CandidateGenerator):
    """Drafts with a bound `DSparkDrafter` from the target's own hidden states (batch size 1); `policy` chooses how
    many drafts each round verifies. `stats` holds the call's figures."""

    requires_model_outputs = True
    model_kwargs_overrides = {"output_hidden_states": True}

    def __init__(
        self,
        drafter: DSparkDrafter,
        generation_config: GenerationConfig,
        policy: GatingPolicy,
        logits_processor: LogitsProcessorList | None = None,
    ):
        # Transformers' prompt-lookup knobs turn on lookup rounds (its default n-gram is 2; 3 measured better here)
        self.drafting = Drafting(
            drafter, policy, generation_config.max_length, compat.eos_ids(generation_config),
            do_sample=bool(generation_config.do_sample), logits_processor=logits_processor,
            lookup_tokens=generation_config.prompt_lookup_num_tokens or 0,
            lookup_ngram=generation_config.max_matching_ngram_size or 3,
        )  # fmt: skip
        self.stats = self.drafting.stats

    @property
    def num_drafting_tokens(self) -> int:
        """The most tokens a round can propose (Transformers >= 5.25 sizes the target cache's rollback by it)."""
        return self.drafting.num_drafting_tokens

    @torch.no_grad()
    def get_candidates(
        self,
        input_ids: torch.LongTensor,
        model_kwargs: dict[str, Any] | None = None,
        model_outputs: Any = None,
        is_first_iteration: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.LongTensor, torch.Tensor | None]:
        if is_first_iteration:  # the target prefills first; we draft from its hidden states next call
            guess = compat.first_round_guess(input_ids, self.drafting.eos_ids)
            return (guess, None) if guess is not None else (input_ids, None)
        hidden_states = getattr(model_outputs or SimpleNamespace(), "hidden_states", None)
        self.drafting.observe(hidden_states, input_ids.shape[1] - 1)
        proposal = self.drafting.propose(input_ids)
        if proposal is None:
            return input_ids, None
        candidates = torch.cat([input_ids, proposal.device_tokens[None]], dim=-1)
        return candidates, None if proposal.q_logits is None else proposal.q_logits[None]

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.Tensor, num_matches: int) -> None:
        """Transformers calls this after each verification: record the round."""
        self.drafting.record(num_matches)
