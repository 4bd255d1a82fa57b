"""Training forward and loss on tiny random targets: consistent with inference, and it learns."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_target
from transformers import AutoModel

from dspark_hf import DSparkDrafter
from dspark_hf.training import dspark_loss, position_weights, training_forward
from dspark_hf.training.forward import block_outputs, sample_anchors
from dspark_hf.training.losses import expected_tau


def test_training_blocks_match_the_inference_path():
    """A block trained at anchor a must see exactly what the drafter sees when x_a is the anchor at inference."""
    target = tiny_target(seed=2)
    drafter = DSparkDrafter.from_target(target, markov_rank=8, block_size=4).eval()
    with torch.no_grad():
        drafter.markov_out.weight.normal_()
    ids = torch.randint(0, 32, (2, 24), generator=torch.Generator().manual_seed(0))
    anchors = torch.tensor([[3, 10, 17], [5, 6, 20]])
    with torch.no_grad():
        out = block_outputs(drafter, target, ids, anchors)
        for row in range(2):
            hidden_states = target(ids[row : row + 1], output_hidden_states=True).hidden_states
            for j, a in enumerate(anchors[row].tolist()):
                cache = drafter.new_context_cache()
                drafter.append_context(cache, drafter.fuse_context(hidden_states, a))
                positions = torch.arange(a, a + 4)[None]
                context = [cache.get(i) for i in range(len(drafter.layers))]
                hidden = drafter(drafter.block_embeddings(ids[row, a : a + 1]), positions, context)[0]
                previous = ids[row, a : a + 4]  # teacher forcing: the true previous tokens
                w1, w2 = drafter.markov_weights()
                expected = drafter.lm_head(hidden).float() + w1[previous] @ w2.T
                torch.testing.assert_close(out["draft_logits"][row, j], expected, rtol=1e-4, atol=1e-4)
                in_range = out["valid"][row, j]  # the last anchor's block runs past the sequence end
                assert out["labels"][row, j][in_range].tolist() == ids[row, a + 1 : a + 5].tolist()


def test_loss_terms_and_weights():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 10)
    labels = torch.randint(0, 10, (3, 4))
    valid = torch.ones(3, 4, dtype=torch.bool)
    same, metrics = dspark_loss(logits, logits, labels, torch.full((3, 4), 5.0), valid)
    assert torch.allclose(metrics["acceptance_by_position"], torch.ones(4))  # identical distributions: TV = 0
    assert metrics["tv"] < 1e-6
    ce_only, _ = dspark_loss(logits, torch.randn(3, 4, 10), labels, torch.zeros(3, 4), valid, loss_type="ce")
    assert ce_only == pytest.approx(float(metrics["ce"]), rel=1e-5)  # CE does not depend on the target distribution
    assert position_weights(4).tolist() == pytest.approx([1.0, 0.7788, 0.6065, 0.4724], rel=1e-3)
    assert expected_tau(torch.tensor([1.0, 1.0, 0.5])) == pytest.approx(3.5)
    with pytest.raises(ValueError, match="loss_type"):
        dspark_loss(logits, logits, labels, torch.zeros(3, 4), valid, loss_type="kl")


def test_anchors_only_where_the_next_token_is_trained():
    mask = torch.zeros(2, 12, dtype=torch.long)
    mask[0, 6:] = 1
    mask[1, 2:4] = 1
    anchors, ok = sample_anchors(mask, 4, torch.Generator().manual_seed(0))
    assert all(5 <= a <= 10 for a in anchors[0].tolist()) and ok[0].all()
    assert sorted(anchors[1][ok[1]].tolist()) == [1, 2] and ok[1].sum() == 2


@pytest.mark.parametrize(("markov_rank", "loss_type"), [(16, "dspark"), (0, "ce")])
def test_a_few_steps_lower_the_loss_and_save_a_loadable_checkpoint(tmp_path, markov_rank, loss_type):
    target = tiny_target(seed=7, sharp=4.0)
    for p in target.parameters():
        p.requires_grad_(False)
    drafter = DSparkDrafter.from_target(target, markov_rank=markov_rank, block_size=4).train()
    prompt = torch.randint(0, 32, (4, 4), generator=torch.Generator().manual_seed(1))
    ids = target.generate(prompt, max_new_tokens=28, do_sample=False)  # self-distillation data
    loss_mask = torch.zeros_like(ids)
    loss_mask[:, 4:] = 1
    optimizer = torch.optim.AdamW(drafter.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        loss, metrics = training_forward(drafter, target, ids, loss_mask, num_anchors=8, loss_type=loss_type,
                                         generator=generator)  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    assert metrics["acceptance_by_position"].shape == (4,)
    assert all(p.grad is None for p in target.parameters())  # the target stays frozen
    drafter.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(drafter.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
