"""Loading a drafter for a target: a local folder or Hub id, or an untrained one built from the target."""

from __future__ import annotations

import os

from transformers import AutoModel, PreTrainedModel

from .modeling_dspark import DSparkDrafter


def load_drafter(
    name_or_path: str | os.PathLike | None, target: PreTrainedModel, **from_pretrained_kwargs
) -> tuple[DSparkDrafter, bool]:
    """Return `(drafter, trained)`, bound to `target`.

    With `name_or_path=None` the drafter is an untrained one from `DSparkDrafter.from_target` (lossless, but its
    drafts are rarely accepted, so it brings no speed-up). Raises `ValueError` for a checkpoint that is not a DSpark
    drafter or was trained for another target.
    """
    if name_or_path is None:
        return DSparkDrafter.from_target(target), False
    model = AutoModel.from_pretrained(str(name_or_path), **from_pretrained_kwargs)
    if getattr(model, "_dspark_candidate_generator", None) is None:
        raise ValueError(
            f"{name_or_path} holds a {type(model).__name__} (model_type={model.config.model_type!r}), "
            "not a DSpark drafter (model_type='dspark')."
        )
    return model.eval().bind(target), True
