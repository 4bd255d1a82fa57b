"""Every shim for a Transformers version or private API, in one place (transformers 5.17 through the newest)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.generation.configuration_utils import CompileConfig


def cache_keyword(model: PreTrainedModel) -> str:
    """The name of the forward's cache argument: renamed `past_key_values` -> `cache` after 5.17."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def default_generation_params() -> dict[str, Any] | None:
    """The defaults generate() fills unset fields with (a private classmethod; None where it does not exist)."""
    defaults = getattr(GenerationConfig, "_get_default_generation_params", None)
    return defaults() if defaults is not None else None


def eos_ids(config: GenerationConfig) -> set[int]:
    """The EOS ids generate() resolved into its private `_eos_token_tensor`."""
    eos = getattr(config, "_eos_token_tensor", None)
    return set(eos.flatten().tolist()) if eos is not None else set()


def set_eos_ids(config: GenerationConfig, eos: list[int], device: torch.device) -> None:
    """What generate() does to a config before its loop runs: the EOS ids as a device tensor."""
    config._eos_token_tensor = torch.tensor(eos, dtype=torch.long, device=device) if eos else None


def first_round_guess(input_ids: torch.LongTensor, eos: set[int]) -> torch.LongTensor | None:
    """Transformers 5.17 takes a prompt that ends in EOS for a finished round when the first round verifies nothing
    and adds no token; verifying one guess (any non-EOS token, checked by exact matching) avoids that. None: no need."""
    if int(input_ids[0, -1]) not in eos:
        return None
    guess = next(t for t in range(len(eos) + 1) if t not in eos)
    return torch.cat([input_ids, input_ids.new_tensor([[guess]])], dim=-1)


def compiled_static_cache() -> dict[str, Any]:
    """generate() keywords for Transformers' own fastest plain decoding: a static KV cache whose decoding step
    Transformers compiles. It compiles by itself only on accelerators; `_compile_all_devices` (private) asks for it on
    a CPU too, as a user who wants the fastest plain decoding there would."""
    config = CompileConfig()
    config._compile_all_devices = True
    return {"cache_implementation": "static", "compile_config": config}
