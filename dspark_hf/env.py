"""Every environment switch dspark-hf reads, each documented here and read only through these functions.

Keyword arguments are the first way to choose (`generate(..., gating=...)`, `load_target(dtype=...)`, the CLI's
options); these switches are for what has no keyword: turning a fast path off for a whole process, or where files go.

- `DSPARK_CUDA_GRAPHS` (default `1`): `0` captures no CUDA graphs anywhere (drafting and verification run eagerly),
  and takes the static loop only where `DSPARK_STATIC_LOOP=1` asks for it.
- `DSPARK_STATIC_LOOP` (default unset: on CUDA unless graphs are off): `0` never takes the static loop; `1` takes it
  on any device (uncaptured off CUDA, as the tests run it).
- `DSPARK_KERNEL` (default `auto`): the Markov drafting step's backend, `triton` or `torch` (the PyTorch reference).
- `DSPARK_ONEDNN` (default `auto`): whether DSpark's generation computes CPU fp32 linear layers with oneDNN;
  `auto` measures once per machine and target from how many tokens a forward that is faster (`decoding/profile.py`,
  `onednn_rows`), `1` always, `0` never (PyTorch's default).
- `DSPARK_HF_CACHE` (default `~/.cache/dspark_hf`): fetched files (the GGUF target, its converted folder), profiles.
- `DSPARK_DRAFTER` (default unset: the shipped drafter): the drafter the demo (`space/app.py`) loads (folder or Hub id).
- `DSPARK_EVAL_DIR` (default `../shared/data/eval` beside the checkout): the eval prompts the tests and the bench
  scripts read.

Transformers' and the Hub's own variables (`HF_HUB_OFFLINE`, `HF_ENDPOINT`) are honoured as they define them.
"""

from __future__ import annotations

import os
from pathlib import Path

CUDA_GRAPHS = "DSPARK_CUDA_GRAPHS"
STATIC_LOOP = "DSPARK_STATIC_LOOP"
KERNEL = "DSPARK_KERNEL"
ONEDNN = "DSPARK_ONEDNN"
CACHE = "DSPARK_HF_CACHE"
DRAFTER = "DSPARK_DRAFTER"
EVAL_DIR = "DSPARK_EVAL_DIR"


def cuda_graphs_enabled() -> bool:
    return os.environ.get(CUDA_GRAPHS, "1") != "0"


def static_loop_choice() -> str:
    """'0' (never), '1' (always) or '' (automatic)."""
    return os.environ.get(STATIC_LOOP, "")


def kernel_choice() -> str:
    return os.environ.get(KERNEL, "auto").lower()


def onednn_choice() -> str:
    """'auto' (measured), '1' (always) or '0' (never)."""
    choice = os.environ.get(ONEDNN, "auto").strip().lower() or "auto"
    if choice not in ("auto", "1", "0"):
        raise ValueError(f"{ONEDNN} must be auto, 1 or 0; got {choice!r}")
    return choice


def onednn_enabled() -> bool:
    return onednn_choice() != "0"


def cache_dir() -> Path:
    """Where dspark-hf keeps fetched files and cost profiles."""
    return Path(os.environ.get(CACHE, Path.home() / ".cache" / "dspark_hf")).expanduser()


def demo_drafter() -> str | None:
    """The drafter the demo loads (None: the shipped one)."""
    return os.environ.get(DRAFTER) or None


def eval_dir(default: Path) -> Path:
    """Where the eval prompts are: $DSPARK_EVAL_DIR, else `default`."""
    return Path(os.environ.get(EVAL_DIR, default))


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")
