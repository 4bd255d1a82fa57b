"""Training a DSpark drafter with `transformers.Trainer`.

`DSparkTrainingModel` puts the drafter and its frozen target behind one `forward(...) -> loss`, which is what
Trainer, DDP (`torchrun`, `accelerate launch`) and gradient accumulation expect. Only the drafter is a registered
submodule, so checkpoints hold the drafter alone and DDP syncs only its gradients. `DSparkTrainer` saves every
checkpoint as a loadable drafter folder (config, safetensors, remote code), resumes from one, and logs the estimated
per-position acceptance and τ next to the loss.
"""

from __future__ import annotations

import json
import os
from functools import partial
from typing import Any

import safetensors.torch
import torch
from torch import nn
from transformers import AutoConfig, PreTrainedModel, Trainer, TrainingArguments
from transformers.utils import logging

from ..modeling_dspark import DSparkDrafter, check_target_compatible
from .calibration import calibrate
from .data import collate_batch
from .forward import training_forward
from .losses import expected_tau

logger = logging.get_logger(__name__)


class DSparkTrainingModel(nn.Module):
    """The drafter and its frozen target as one module whose forward returns the DSpark (or ablation) loss."""

    def __init__(
        self, drafter: DSparkDrafter, target: PreTrainedModel, num_anchors: int = 64, loss_type: str = "dspark"
    ):
        super().__init__()
        self.drafter = drafter.train()
        object.__setattr__(self, "target", target.eval().requires_grad_(False))  # not a submodule: never saved
        self.num_anchors = num_anchors
        self.loss_type = loss_type
        drafter.bind(target)

    def _apply(self, fn, recurse: bool = True):  # .to()/.cuda() move the unregistered target too
        self.target._apply(fn)
        return super()._apply(fn, recurse)

    def forward(
        self, input_ids: torch.Tensor, loss_mask: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any
    ) -> dict[str, torch.Tensor]:
        loss, metrics = training_forward(
            self.drafter, self.target, input_ids, loss_mask, attention_mask, self.num_anchors, self.loss_type
        )
        return {"loss": loss, **metrics}


class DSparkTrainer(Trainer):
    """Trainer for a `DSparkTrainingModel`: drafter-only checkpoints, resumable, acceptance estimates in the logs."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.model, DSparkTrainingModel):
            raise TypeError("DSparkTrainer trains a DSparkTrainingModel(drafter, target)")
        self._acceptance: list[torch.Tensor] = []

    @property
    def drafter(self) -> DSparkDrafter:
        return self.model.drafter

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        self._acceptance.append(outputs["acceptance_by_position"].detach().float())
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._acceptance and "loss" in logs:
            acceptance = torch.stack(self._acceptance).mean(0)
            if self.args.world_size > 1 and torch.distributed.is_initialized():
                torch.distributed.all_reduce(acceptance)
                acceptance /= self.args.world_size
            self._acceptance.clear()
            logs["tau_estimate"] = round(expected_tau(acceptance), 4)
            logs.update({f"acceptance_{k + 1}": round(float(a), 4) for k, a in enumerate(acceptance)})
        super().log(logs, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Each checkpoint is a drafter folder `AutoModel.from_pretrained` loads; the target is never written."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.drafter.save_pretrained(output_dir, safe_serialization=True)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        path = os.path.join(resume_from_checkpoint, "model.safetensors")
        if not os.path.isfile(path):
            raise ValueError(f"{resume_from_checkpoint} holds no model.safetensors: not a DSpark training checkpoint")
        self.drafter.load_state_dict(safetensors.torch.load_file(path, device=str(self.drafter.device)))


def initial_drafter(
    target: PreTrainedModel, init: str | os.PathLike | None = None, *, markov_rank: int = 128, block_size: int = 7
) -> DSparkDrafter:
    """The drafter training starts from, bound to `target`: a new one, or the weights of drafter `init` (a folder or
    Hub id, safetensors only) to go on training it on new data.

    From `init` everything but its calibration carries over (layers, target layers, draft vocabulary); with another
    `markov_rank` its Markov head is dropped or started afresh and so is the confidence head, whose input includes
    it — that is how a DFlash ablation starts from a DSpark drafter's backbone. Raises `ValueError` for a checkpoint
    that is not a DSpark drafter, was trained for another target or another block size.
    """
    if init is None:
        return DSparkDrafter.from_target(target, markov_rank=markov_rank, block_size=block_size)
    config = AutoConfig.from_pretrained(init)
    if config.model_type != "dspark":
        raise ValueError(f"--init {init} holds a {config.model_type!r} model, not a DSpark drafter")
    check_target_compatible(config, target)
    if config.block_size != block_size:
        raise ValueError(f"--init {init} drafts blocks of {config.block_size}, not {block_size}: pass that size")
    drafter, info = DSparkDrafter.from_pretrained(
        init, markov_rank=markov_rank, confidence_temperatures=None, use_safetensors=True,
        ignore_mismatched_sizes=True, output_loading_info=True,
    )  # fmt: skip
    fresh = [*info["missing_keys"], *info["unexpected_keys"], *(m[0] for m in info["mismatched_keys"])]
    foreign = sorted(name for name in fresh if not name.startswith(("markov_", "confidence_head.")))
    if foreign:
        raise ValueError(f"--init {init} does not fit this drafter's layout (differs in {', '.join(foreign)})")
    if fresh:
        logger.warning(f"from {init}: Markov rank {config.markov_rank} -> {markov_rank}, {len(fresh)} tensors new")
    weight = target.get_input_embeddings().weight
    return drafter.to(device=weight.device, dtype=weight.dtype).bind(target)


def train_drafter(
    target: PreTrainedModel,
    rows: list[dict[str, list[int]]],
    output_dir: str,
    *,
    markov_rank: int = 128,
    block_size: int = 7,
    loss_type: str = "dspark",
    num_anchors: int = 64,
    max_length: int = 2048,
    pad_token_id: int = 0,
    resume_from_checkpoint: str | bool | None = None,
    calibration_rows: list[dict[str, list[int]]] | None = None,
    init: str | os.PathLike | None = None,
    **training_args: Any,
) -> DSparkTrainer:
    """Train a drafter for `target` on `rows` (a new one, or drafter `init` further, see `initial_drafter`) and
    save it to `output_dir`. `training_args` go to `TrainingArguments` (max_steps, learning_rate, bf16,
    gradient_accumulation_steps, ...). With
    `calibration_rows` (held out from `rows`), the confidence temperatures are fitted after training and saved in the
    config; the report lands in `trainer.calibration` and `calibration.json`."""
    drafter = initial_drafter(target, init, markov_rank=markov_rank, block_size=block_size)
    defaults = dict(lr_scheduler_type="cosine", warmup_steps=0.03, logging_steps=10, save_steps=500, report_to=[])
    if loss_type == "ce":  # the ablation trains no confidence head: DDP must tolerate its unused parameters
        defaults["ddp_find_unused_parameters"] = True
    args = TrainingArguments(output_dir=output_dir, **{**defaults, **training_args})
    trainer = DSparkTrainer(
        model=DSparkTrainingModel(drafter, target, num_anchors=num_anchors, loss_type=loss_type),
        args=args,
        train_dataset=rows,
        data_collator=partial(collate_batch, pad_token_id=pad_token_id, max_length=max_length),
    )
    trainer.train_metrics = trainer.train(resume_from_checkpoint=resume_from_checkpoint).metrics
    trainer.calibration = None
    if calibration_rows and loss_type == "ce":
        logger.warning("the CE ablation does not train the confidence head: nothing to calibrate")
    elif calibration_rows:
        trainer.calibration = calibrate(drafter, target, calibration_rows, num_anchors=num_anchors)
        if args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            with open(os.path.join(output_dir, "calibration.json"), "w") as handle:
                json.dump(trainer.calibration, handle, indent=2)
    trainer.save_model(output_dir)
    return trainer
