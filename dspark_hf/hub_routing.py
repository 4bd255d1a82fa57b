"""The generate() routing a Hub folder carries for users who load the drafter with `trust_remote_code=True` alone.

`dspark export-hub` appends this file to the folder's `modeling_dspark.py`; the package itself never imports it
(`import dspark_hf` installs the full routing, `decoding/routing.py`). It is the simplest lossless DSpark round:
Transformers' own assisted loop verifies, and every round drafts the whole block eagerly over the full vocabulary
with the Markov head's plain PyTorch loop — no CUDA graphs, kernels, scheduler, prompt lookup or static loop. It
routes only drafters of the class defined beside it, so a process that also imports dspark_hf (or another folder's
code) runs each drafter with its own code.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.candidate_generator import CandidateGenerator
from transformers.generation.logits_process import LogitsProcessorList

from .modeling_dspark import DSparkDrafter


@dataclass
class DSparkHubStats:
    """Figures of one generate() call (τ counts the target's bonus token)."""

    rounds: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    accepted_per_round: list[int] = field(default_factory=list)

    @property
    def tau(self) -> float:
        return (self.accepted_tokens + self.rounds) / self.rounds if self.rounds else 0.0


class DSparkHubCandidateGenerator(CandidateGenerator):
    """Drafts a block per round from the target's hidden states; Transformers' loop verifies it."""

    requires_model_outputs = True
    model_kwargs_overrides = {"output_hidden_states": True}

    def __init__(self, drafter: DSparkDrafter, generation_config: Any, logits_processor: Any = None):
        self.drafter, self.max_length = drafter, generation_config.max_length
        self.do_sample = bool(generation_config.do_sample)
        self.processors = logits_processor or LogitsProcessorList()
        eos = getattr(generation_config, "_eos_token_tensor", None)
        self.eos = set(eos.flatten().tolist()) if eos is not None else set()
        self.cache = drafter.new_context_cache()
        self.stats = DSparkHubStats()
        self.num_drafting_tokens = drafter.config.block_size
        self._drafted = 0

    @torch.no_grad()
    def get_candidates(self, input_ids, model_kwargs=None, model_outputs=None, is_first_iteration=False, **kwargs):
        if is_first_iteration:  # the target prefills; drafting starts from its hidden states
            if int(input_ids[0, -1]) in self.eos:  # transformers 5.17 ends a call whose first round adds nothing
                guess = next(t for t in range(len(self.eos) + 1) if t not in self.eos)
                return torch.cat([input_ids, input_ids.new_tensor([[guess]])], dim=-1), None
            return input_ids, None
        drafter, gamma = self.drafter, self.num_drafting_tokens
        anchor_at = input_ids.shape[1] - 1
        new = anchor_at - self.cache.length
        drafter.append_context(self.cache, drafter.fuse_context(model_outputs.hidden_states, new))
        budget = min(gamma, self.max_length - input_ids.shape[1] - 1)
        self._drafted = 0
        if budget <= 0:
            return input_ids, None
        positions = torch.arange(anchor_at, anchor_at + gamma, device=input_ids.device)[None]
        context = [self.cache.get(i) for i in range(len(drafter.layers))]
        hidden = drafter(drafter.block_embeddings(input_ids[:, -1]), positions, context)[0]
        base = drafter.lm_head(hidden).float()
        w1, w2 = drafter.markov_weights()
        sequence, q_logits = input_ids, []
        for k in range(budget):  # the Markov head sees the token drafted just before each position
            logits = base[k] if w1 is None else base[k] + w1[sequence[0, -1]].float() @ w2.float().T
            logits = self.processors(sequence, logits[None])[0]
            if self.do_sample:
                token = torch.multinomial(logits.softmax(-1), 1)
            else:
                token = logits.argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, token[None].to(sequence.dtype)], dim=-1)
            q_logits.append(logits)
            if int(token) in self.eos:
                break
        self._drafted = sequence.shape[1] - input_ids.shape[1]
        return sequence, torch.stack(q_logits)[None] if self.do_sample else None

    def update_candidate_strategy(self, input_ids, scores, num_matches: int) -> None:
        if self._drafted:
            accepted = min(int(num_matches), self._drafted)
            self.stats.rounds += 1
            self.stats.drafted_tokens += self._drafted
            self.stats.accepted_tokens += accepted
            self.stats.accepted_per_round.append(accepted)
            self._drafted = 0


def install_hub_routing() -> None:
    """Route `generate(..., assistant_model=<this file's DSparkDrafter>)` to `DSparkHubCandidateGenerator`."""
    from transformers.generation.utils import GenerationMixin

    marker = f"_dspark_hub_routed_{id(DSparkDrafter)}"
    if getattr(GenerationMixin, marker, False):
        return
    original_get, original_generate = GenerationMixin._get_candidate_generator, GenerationMixin.generate
    signature = inspect.signature(original_get)

    @functools.wraps(original_get)
    def _get_candidate_generator(self, *args, **kwargs):
        arguments = signature.bind(self, *args, **kwargs).arguments
        drafter = arguments.get("assistant_model")
        if not isinstance(drafter, DSparkDrafter):
            return original_get(self, *args, **kwargs)
        generator = DSparkHubCandidateGenerator(
            drafter, arguments["generation_config"], arguments.get("logits_processor")
        )
        drafter.stats = generator.stats
        return generator

    @functools.wraps(original_generate)
    def generate(self, *args, **kwargs):
        drafter = kwargs.get("assistant_model")
        if not isinstance(drafter, DSparkDrafter):
            return original_generate(self, *args, **kwargs)
        if "gating" in kwargs:
            raise ValueError("gating= needs the dspark-hf package: pip install dspark-hf, then import dspark_hf")
        inputs = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
        if inputs is None or inputs.ndim != 2 or inputs.shape[0] != 1 or inputs.shape[1] == 0:
            raise ValueError("DSpark drafting needs input_ids of one non-empty prompt, shape (1, tokens)")
        drafter.bind(self)
        return original_generate(self, *args, **kwargs)

    setattr(GenerationMixin, marker, True)
    GenerationMixin._get_candidate_generator = _get_candidate_generator
    GenerationMixin.generate = generate
