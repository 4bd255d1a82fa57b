"""The `generate()` hook: validate a request, resolve its policy, run it on the static loop or Transformers' loop.

`install_generate_routing` wraps two methods of `GenerationMixin`, once per process: `generate`, which takes
requests whose `assistant_model` is a `DSparkDrafter` (any other call goes through untouched), and
`_get_candidate_generator`, which hands Transformers' assisted loop our `DSparkCandidateGenerator` for them. The
request's settings travel between the two in a context variable, never on the drafter; its statistics come back from
the loop that ran it and are left on `drafter.stats`.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .. import notices
from ..configuration_dspark import parse_gating
from ..modeling_dspark import DSparkDrafter
from .candidates import DSparkCandidateGenerator
from .policies import ConfidenceThreshold, FixedLength, GatingPolicy, PrefixScheduler
from .profile import draft_key, linear_routing, load_profile
from .round import DSparkStats
from .static_loop import speculative_generate, static_loop_request

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedModel


def make_gating(
    spec: str,
    threshold: float = 0.1,
    target: PreTrainedModel | None = None,
    drafter: DSparkDrafter | None = None,
    max_tokens: int | None = None,
    look_ahead: bool = False,
    static: bool = False,
    watch_rounds: bool = True,
    do_sample: bool = False,
) -> GatingPolicy:
    """A policy from its name, as stored in `DSparkConfig.gating` or given on the CLI. The scheduler needs the target
    and the drafter: it reads what their rounds cost on this device (`profile.load_profile`, measured once and cached)
    for forwards of up to `max_tokens` new tokens (default: the drafter's block + 1); `look_ahead` (greedy decoding
    only) lets it pick the best length overall (`PrefixScheduler`); `static`: the static loop verifies, at its costs;
    `watch_rounds`: it also plans with what rounds take beyond their measured cost (timing-dependent decisions);
    `do_sample`: at the cost of a sampled drafting round (drawing the drafts, accepting them by rejection sampling)."""
    name, value = parse_gating(spec)
    if name == "threshold":
        return ConfidenceThreshold(threshold if value is None else value)
    if name == "fixed":
        return FixedLength(None if value is None else int(value))
    if target is None or drafter is None:
        raise ValueError("gating 'scheduler' needs the target and the drafter (it measures their costs)")
    profile = load_profile(target, drafter, max_tokens=max_tokens, static=static, do_sample=do_sample)
    draft_s = profile.draft_s[draft_key(drafter, do_sample)]
    return PrefixScheduler(profile.verify_s[1], draft_s, look_ahead=look_ahead, watch_rounds=watch_rounds)


# a first call measures forwards as long as prompt lookup's usual continuations (16 drafts, what the bench and the demo
# run) too, so that a later call with lookup finds them measured
PROFILED_LOOKUP_TOKENS = 16


def resolve_policy(
    gating: GatingPolicy | str | None,
    target: PreTrainedModel,
    drafter: DSparkDrafter,
    config: GenerationConfig,
    static: bool,
) -> GatingPolicy:
    """The request's policy: a callable as given, else by name (`gating=`, default the drafter's config)."""
    gating = gating or drafter.config.gating
    if not isinstance(gating, str):
        return gating
    longest = max(drafter.config.block_size, config.prompt_lookup_num_tokens or 0, PROFILED_LOOKUP_TOKENS) + 1
    return make_gating(
        gating, drafter.config.confidence_threshold, target=target, drafter=drafter, max_tokens=longest,
        look_ahead=not config.do_sample,  # greedy: any L is lossless, so the scheduler may look past a step
        # sampling: decisions from the cached costs and this call's tokens only, so a seed fixes the sampled tokens
        static=static, watch_rounds=not config.do_sample, do_sample=bool(config.do_sample),
    )  # fmt: skip


def validate_request(target: PreTrainedModel, args: tuple, kwargs: dict[str, Any]) -> None:
    """Refuse, before any work, what the DSpark path cannot do losslessly."""
    config = kwargs.get("generation_config") or target.generation_config

    def setting(name: str) -> Any:
        return kwargs.get(name, getattr(config, name, None))

    inputs = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
    if inputs is None:
        raise ValueError("DSpark drafting needs `input_ids` (prompts given only as `inputs_embeds` are not supported).")
    if inputs.ndim != 2 or inputs.shape[1] == 0:
        raise ValueError(
            f"DSpark drafting needs a prompt of at least one token as input_ids of shape (1, tokens); got shape "
            f"{tuple(inputs.shape)}. An empty chat still has its template's tokens: encode it with the tokenizer."
        )
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


@dataclass
class Request:
    """One DSpark `generate()` call, as the candidate-generator hook needs it."""

    drafter: DSparkDrafter
    gating: GatingPolicy | str | None
    stats: DSparkStats | None = None


_REQUEST: contextvars.ContextVar[Request | None] = contextvars.ContextVar("dspark_request", default=None)


def run_request(target: PreTrainedModel, drafter: DSparkDrafter, transformers_loop, args: tuple, kwargs: dict):
    """A validated DSpark call: the static loop where it reproduces the request, else `transformers_loop` (the
    original `generate`, which asks the hook below for our candidate generator). A static-loop error that leaves
    the device usable reruns the call on Transformers' loop, warning once."""
    gating = kwargs.pop("gating", None)
    time_rounds = kwargs.pop("time_rounds", False)  # the static loop's per-phase clock (the bench's profile)
    validate_request(target, args, kwargs)
    if target.dtype in (torch.bfloat16, torch.float16):
        notices.warn_once(
            "reduced-precision",
            f"the target runs in {str(target.dtype).removeprefix('torch.')}: a forward that verifies several tokens "
            "can break near-ties unlike one-token decoding, so greedy output may differ from plain generate() (as "
            "with Transformers' own assisted decoding); float32 is the token-identity guarantee",
        )
    drafter.bind(target)
    request = Request(drafter, gating)
    token = _REQUEST.set(request)
    try:
        with notices.recording_call() as events, linear_routing(target, drafter):  # oneDNN where it pays here
            loop = static_loop_request(target, args, kwargs)
            if loop is not None:
                ids, config = loop
                try:
                    policy = resolve_policy(gating, target, drafter, config, static=True)
                    out, request.stats = speculative_generate(target, drafter, ids, config, policy, time_rounds)
                    return out
                except Exception as err:
                    if not device_usable(target.device):
                        raise  # the CUDA context is lost: nothing in this process can run on it any more
                    notices.fallback("static-loop", f"the static loop failed ({err!r}); running Transformers' loop")
                    target._dspark_static_target = None  # the next call builds its cache and graphs afresh
            return transformers_loop(target, *args, **kwargs)
    finally:
        _REQUEST.reset(token)
        if request.stats is not None:
            request.stats.fallbacks, request.stats.captures = events.fallbacks, events.captures
            drafter.stats = request.stats


def candidate_generator(target: PreTrainedModel, arguments: dict[str, Any]) -> DSparkCandidateGenerator | None:
    """Our candidate generator for the DSpark request being run (None: not one)."""
    request = _REQUEST.get()
    assistant = arguments.get("assistant_model")
    if request is None or assistant is not request.drafter:
        return None
    config = arguments["generation_config"]
    policy = resolve_policy(request.gating, target, request.drafter, config, static=False)
    generator = DSparkCandidateGenerator(request.drafter, config, policy, arguments.get("logits_processor"))
    request.stats = generator.stats
    return generator


def install_generate_routing() -> None:
    """Route `generate(..., assistant_model=<DSparkDrafter>)` through `run_request`. Idempotent."""
    from transformers.generation.utils import GenerationMixin

    if getattr(GenerationMixin.generate, "_dspark_routed", False):
        return
    original_get = GenerationMixin._get_candidate_generator
    original_generate = GenerationMixin.generate
    signature = inspect.signature(original_get)

    @functools.wraps(original_get)
    def _get_candidate_generator(self, *args, **kwargs):
        ours = candidate_generator(self, signature.bind(self, *args, **kwargs).arguments)
        return ours if ours is not None else original_get(self, *args, **kwargs)

    @functools.wraps(original_generate)
    def generate(self, *args, **kwargs):
        assistant = kwargs.get("assistant_model")
        if not isinstance(assistant, DSparkDrafter):
            return original_generate(self, *args, **kwargs)
        return run_request(self, assistant, original_generate, args, kwargs)

    generate._dspark_routed = True
    GenerationMixin._get_candidate_generator = _get_candidate_generator
    GenerationMixin.generate = generate
