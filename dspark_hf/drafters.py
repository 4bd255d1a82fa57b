"""Loading a drafter for a target: a local folder or Hub id, the shipped default, or an untrained one.

The default drafter (for the default target, SmolLM2-135M-Instruct) is tried like the default target: the Hub id
(cache, then network), then the copy in a source checkout's `model_cards/`, so the same call works online, offline
in a clone, and in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoConfig, AutoModel, PreTrainedModel

from .modeling_dspark import DSparkDrafter, check_target_compatible
from .notices import log
from .targets import hub_reachable

DEFAULT_DRAFTER = "dspark-hf/SmolLM2-135M-Instruct-DSpark"
DEFAULT_DFLASH = "dspark-hf/SmolLM2-135M-Instruct-DFlash-ablation"  # the benchmark's ablation: no Markov head, CE
UNTRAINED = "untrained"
MODEL_CARDS = Path(__file__).resolve().parents[1] / "model_cards"


def default_drafter_source(repo_id: str = DEFAULT_DRAFTER) -> str | None:
    """Where a shipped drafter loads from: its Hub id when cached or reachable, else its folder in `model_cards/`
    (next to the package source, or under the working directory), else None."""
    try:
        AutoConfig.from_pretrained(repo_id, local_files_only=not hub_reachable())
        return repo_id
    except OSError:
        pass
    for root in (MODEL_CARDS, Path.cwd() / "model_cards"):
        folder = root / repo_id.split("/")[1]
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return str(folder)
    return None


def check_drafter_source(name_or_path: str | os.PathLike | None) -> None:
    """Refuse early a drafter argument that names a folder which is not there. A Hub id is `name` or `org/name`;
    anything else that looks like a path (absolute, `./`, `../`, `~`, more than one `/`) must be a folder."""
    if name_or_path is None or str(name_or_path) == UNTRAINED:
        return
    text = str(name_or_path)
    path = Path(text).expanduser()
    looks_like_path = isinstance(name_or_path, os.PathLike) or text.startswith(("/", ".", "~")) or text.count("/") > 1
    if looks_like_path and not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "not found"
        raise ValueError(
            f"drafter folder {text} {what}: pass a folder holding config.json and model.safetensors, a Hub id "
            "(org/name), or 'untrained'"
        )


def load_drafter(
    name_or_path: str | os.PathLike | None,
    target: PreTrainedModel,
    default: str = DEFAULT_DRAFTER,
    **from_pretrained_kwargs,
) -> tuple[DSparkDrafter, bool]:
    """Return `(drafter, trained)`, bound to `target`.

    `name_or_path`: a folder or Hub id; `"untrained"` for `DSparkDrafter.from_target(target)` (lossless, but its
    drafts are rarely accepted, so it brings no speed-up); None for the shipped drafter `default`, or the untrained
    one, saying why, when `default` is not at hand or was trained for another target. Raises `ValueError` for a
    checkpoint that is not a DSpark drafter or was trained for another target.
    """
    check_drafter_source(name_or_path)
    if str(name_or_path) == UNTRAINED:
        return DSparkDrafter.from_target(target), False
    if name_or_path is None:
        source = default_drafter_source(default)
        if source is None:
            log(f"the default drafter ({default}) is neither on the Hub nor in a model_cards/ folder here")
            return DSparkDrafter.from_target(target), False
        try:
            check_target_compatible(AutoConfig.from_pretrained(source), target)
        except ValueError:
            log(
                f"the default drafter was trained for SmolLM2-135M-Instruct, not {target.config.name_or_path}; "
                "train one for this target with `dspark train` and pass it as the drafter"
            )
            return DSparkDrafter.from_target(target), False
        name_or_path = source
    model = AutoModel.from_pretrained(str(name_or_path), **from_pretrained_kwargs)
    if not isinstance(model, DSparkDrafter):
        raise ValueError(
            f"{name_or_path} holds a {type(model).__name__} (model_type={model.config.model_type!r}), "
            "not a DSpark drafter (model_type='dspark')."
        )
    return model.eval().bind(target), True
