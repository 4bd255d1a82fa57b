"""Config, construction, binding checks, and save/load through the Auto classes."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_target
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

from dspark_hf import DSparkConfig, DSparkDrafter
from dspark_hf.configuration_dspark import default_target_layer_ids
from dspark_hf.drafters import load_drafter

pytestmark = pytest.mark.compat


def test_default_layers_follow_reference_recipe():
    assert default_target_layer_ids(30) == [1, 8, 14, 20, 27]  # SmolLM2-135M: 5 layers from 1 to N-3
    assert default_target_layer_ids(36) == [1, 9, 17, 25, 33]
    ids = default_target_layer_ids(6)
    assert ids == [1, 2, 3] and all(1 <= i <= 3 for i in ids)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(block_size=0), "block_size"),
        (dict(markov_rank=-1), "markov_rank"),
        (dict(gating="nope"), "gating"),
        (dict(target_layer_ids=[0, 31]), "outside"),
        (dict(block_size=3, confidence_temperatures=[1.0, 1.0]), "confidence_temperatures"),
        (dict(draft_vocab=[5, 3]), "strictly increasing"),
        (dict(draft_vocab=[]), "strictly increasing"),
        (dict(vocab_size=10, draft_vocab=[2, 10]), "outside the vocabulary"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DSparkConfig(**kwargs)


def test_from_target_shapes_and_shared_weights(tiny):
    drafter = DSparkDrafter.from_target(tiny, markov_rank=8, num_hidden_layers=3)
    cfg = drafter.config
    assert (cfg.hidden_size, cfg.vocab_size, cfg.target_num_hidden_layers) == (32, 32, 6)
    assert cfg.block_size == 7 and len(drafter.layers) == 3
    assert drafter.fc.in_features == len(cfg.target_layer_ids) * 32
    assert drafter.markov_in.weight.shape == (32, 8) and drafter.markov_out.weight.shape == (32, 8)
    assert drafter.confidence_head.in_features == 32 + 8
    # the target's embedding and head are used by reference and never stored in the drafter
    names = set(drafter.state_dict())
    assert not any("embed_tokens" in n or "lm_head" in n for n in names)
    ids = torch.tensor([[3, 4]])
    assert torch.equal(drafter.embed_tokens(ids), tiny.get_input_embeddings()(ids))


def test_unbound_drafter_says_how_to_bind(tiny):
    drafter = DSparkDrafter(DSparkDrafter.from_target(tiny).config)
    with pytest.raises(RuntimeError, match="bind"):
        drafter.embed_tokens(torch.tensor([[1]]))


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (dict(hidden_size=64, intermediate_size=64), "hidden size 64 != 32"),
        (dict(vocab_size=48), "vocabulary 48 != 32"),
        (dict(num_hidden_layers=8), "layer count 8 != 6"),
        (dict(seed=99), "fingerprint"),
    ],
)
def test_binding_to_the_wrong_target_fails_clearly(tiny, other, message):
    drafter = DSparkDrafter.from_target(tiny)
    wrong = tiny_target(**other)
    with pytest.raises(ValueError, match=message):
        wrong.generate(torch.tensor([[1, 2, 3]]), assistant_model=drafter, max_new_tokens=3)


def test_fingerprint_accepts_the_same_model_in_another_precision(tiny):
    drafter = DSparkDrafter.from_target(tiny)
    twin = tiny_target()
    with torch.no_grad():  # simulate quantization noise (the GGUF build of the same model)
        w = twin.get_input_embeddings().weight
        w.add_(torch.randn_like(w) * w.std() * 0.1)
    drafter.bind(twin.to(torch.bfloat16))
    assert drafter.dtype == torch.bfloat16  # bind follows the target's dtype


def test_draft_vocabulary_logits_saving_and_refresh(tiny, tmp_path):
    """The draft vocabulary's rows of the LM head and W2 give the same logits as the whole ones, are re-gathered
    after the weights change in place (a training step), and the vocabulary travels with the config."""
    drafter = DSparkDrafter.from_target(tiny, markov_rank=8)
    hidden = torch.randn(4, 32)
    drafter.set_draft_vocab(torch.tensor([30, 2, 7, 2]))  # any order, duplicates dropped
    assert drafter.config.draft_vocab == [2, 7, 30]
    logits, w2, ids = drafter.draft_logits(hidden)
    assert ids.tolist() == [2, 7, 30]
    torch.testing.assert_close(logits, drafter.lm_head(hidden)[:, ids])
    with torch.no_grad():
        drafter.markov_out.weight.normal_()
        tiny.lm_head.weight.mul_(2.0)
    logits, w2, _ = drafter.draft_logits(hidden)
    assert torch.equal(w2, drafter.markov_out.weight[ids])
    torch.testing.assert_close(logits, drafter.lm_head(hidden)[:, ids])
    whole, whole_w2, no_ids = drafter.draft_logits(hidden, restrict=False)
    assert no_ids is None and whole.shape == (4, 32) and whole_w2 is drafter.markov_out.weight
    drafter.save_pretrained(tmp_path)
    assert AutoModel.from_pretrained(tmp_path).config.draft_vocab == [2, 7, 30]
    drafter.set_draft_vocab(None)
    assert drafter.draft_logits(hidden)[2] is None
    with pytest.raises(ValueError, match="outside the vocabulary"):
        drafter.set_draft_vocab([1, 32])


def test_save_and_load_roundtrip_with_auto_classes(tiny, tmp_path):
    drafter = DSparkDrafter.from_target(tiny, markov_rank=8)
    with torch.no_grad():
        drafter.markov_out.weight.normal_()
    drafter.save_pretrained(tmp_path)
    # a plain checkpoint: weights and config, no code (`dspark export-hub` makes a Hub folder of it)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "dspark" and "auto_map" not in config
    assert not any("embed_tokens" in k or "lm_head" in k for k in load_file(tmp_path / "model.safetensors"))
    assert isinstance(AutoConfig.from_pretrained(tmp_path), DSparkConfig)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, DSparkDrafter)
    for (name, a), (_, b) in zip(drafter.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # and it computes the same thing: the state dict is not all of a model (RoPE frequencies once came back as
    # uninitialised memory from from_pretrained's meta-device build, so every loaded drafter drafted garbage)
    loaded.bind(tiny)
    positions = torch.arange(5, 5 + drafter.config.block_size)[None]
    expected, got = drafter.rotary_emb(positions, torch.float32), loaded.rotary_emb(positions, torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    context = drafter.fuse_context(tiny(torch.tensor([[3, 1, 4, 1, 5]]), output_hidden_states=True).hidden_states)
    outputs = []
    for model in (drafter, loaded):
        cache = model.new_context_cache()
        model.append_context(cache, context)
        kv = [cache.get(i) for i in range(len(model.layers))]
        outputs.append(model(model.block_embeddings(torch.tensor([9])), positions, kv))
    assert torch.equal(outputs[0], outputs[1])


def test_load_refuses_pickles_and_foreign_checkpoints(tiny, tmp_path):
    drafter = DSparkDrafter.from_target(tiny)
    drafter.save_pretrained(tmp_path / "pickled")
    (tmp_path / "pickled" / "model.safetensors").unlink()
    torch.save(drafter.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        AutoModel.from_pretrained(tmp_path / "pickled")

    drafter.save_pretrained(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(Exception, match="(?i)safetensors|header|deserializ"):
        AutoModel.from_pretrained(tmp_path / "corrupt")

    tiny.save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="not a DSpark drafter"):
        load_drafter(tmp_path / "llama", tiny)
