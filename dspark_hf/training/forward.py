"""The parallel, teacher-forced training forward of a DSpark drafter.

One frozen target forward gives the context features and the target's next-token distributions for a batch of
sequences. Then many anchors per sequence are trained at once: every anchor a opens a block [x_a, mask, ..., mask]
at positions a..a+γ-1 that sees the context features of positions < a (exactly what the drafter's cache holds at
inference when x_a is the anchor) and its own block, bidirectionally. The Markov head is teacher-forced with the true
previous tokens.
"""

from __future__ import annotations

import torch

from ..modeling_dspark import DSparkDrafter
from .losses import dspark_loss


def sample_anchors(loss_mask: torch.Tensor, num_anchors: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, A) anchor positions, drawn without replacement among positions whose next token is trained on.

    A row with fewer candidates repeats its valid anchors (their duplicates are masked out of the loss by the caller
    through `anchor_valid`). Returns anchors and a validity mask, both (B, A).
    """
    candidates = loss_mask[:, 1:].bool()  # anchor a is useful if token a+1 carries loss
    scores = torch.rand(candidates.shape, generator=generator, device=loss_mask.device)
    scores = scores.masked_fill(~candidates, -1.0)
    k = min(num_anchors, candidates.shape[1])
    top = scores.topk(k, dim=1)
    return top.indices, top.values >= 0


def training_forward(
    drafter: DSparkDrafter,
    target,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    num_anchors: int = 64,
    loss_type: str = "dspark",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and metrics for a batch (B, T). `loss_mask` marks the tokens to learn (assistant tokens)."""
    outputs = training_blocks(drafter, target, input_ids, loss_mask, attention_mask, num_anchors, generator)
    return dspark_loss(
        outputs["draft_logits"],
        outputs["target_logits"],
        outputs["labels"],
        outputs["confidence_logits"],
        outputs["valid"],
        loss_type,
    )


def training_blocks(
    drafter: DSparkDrafter,
    target,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    num_anchors: int = 64,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """`block_outputs` at random anchors, with `valid` narrowed to real anchors whose labels carry loss."""
    anchors, anchor_valid = sample_anchors(loss_mask, num_anchors, generator)
    outputs = block_outputs(drafter, target, input_ids, anchors, attention_mask)
    trained = loss_mask.bool().gather(1, outputs["label_positions"].flatten(1)).view_as(outputs["valid"])
    outputs["valid"] = outputs["valid"] & anchor_valid[..., None] & trained
    return outputs


def block_outputs(
    drafter: DSparkDrafter,
    target,
    input_ids: torch.Tensor,
    anchors: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    target_distributions: bool = True,
) -> dict[str, torch.Tensor]:
    """Teacher-forced drafter outputs for the blocks opened at `anchors` (B, A); every tensor is (B, A, γ[, V]).
    `target_distributions=False` leaves out the target's logits at the block positions (a (B, A, γ, V) copy) for
    callers that only need the drafts."""
    gamma = drafter.config.block_size
    batch, length = input_ids.shape
    with torch.no_grad():
        out = target(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    target_logits = out.logits
    num = anchors.shape[1]
    offsets = torch.arange(gamma, device=input_ids.device)
    positions = anchors[..., None] + offsets  # (B, A, γ): block positions; position k predicts token at +1
    label_pos = positions + 1
    in_range = label_pos < length
    label_pos_c = label_pos.clamp(max=length - 1)
    labels = input_ids.gather(1, label_pos_c.flatten(1)).view(batch, num, gamma)

    # context keys/values for every position, once per sequence
    fused = drafter.fuse_context(out.hidden_states)
    ctx_positions = torch.arange(length, device=input_ids.device).expand(batch, -1)
    cos, sin = drafter.rotary_emb(ctx_positions, fused.dtype)
    context = [layer.self_attn.project_kv(fused, cos, sin) for layer in drafter.layers]

    # blocks: [x_a, mask...] for every anchor, flattened to one query sequence per row
    anchor_tokens = input_ids.gather(1, anchors)
    blocks = drafter.block_embeddings(anchor_tokens.flatten(), gamma).view(batch, num * gamma, -1)
    block_id = torch.arange(num, device=input_ids.device).repeat_interleave(gamma)
    sees_context = (
        torch.arange(length, device=input_ids.device)[None, None, :] < anchors.repeat_interleave(gamma, 1)[:, :, None]
    )
    if attention_mask is not None:
        sees_context = sees_context & attention_mask.bool()[:, None, :]
    sees_block = (block_id[:, None] == block_id[None, :]).expand(batch, -1, -1)
    mask = torch.cat([sees_context, sees_block], dim=-1)[:, None]  # (B, 1, A·γ, T + A·γ)
    hidden = drafter(blocks, positions.flatten(1), context, attention_mask=mask).view(batch, num, gamma, -1)

    base_logits = drafter.lm_head(hidden)
    previous = input_ids.gather(1, positions.clamp(max=length - 1).flatten(1)).view(batch, num, gamma)
    w1, w2 = drafter.markov_weights()
    draft_logits = base_logits.float()
    conf_features = hidden
    if w1 is not None:
        prev_embed = torch.nn.functional.embedding(previous, w1)
        draft_logits = draft_logits + prev_embed.float() @ w2.float().T
        conf_features = torch.cat([hidden, prev_embed], dim=-1)
    confidence_logits = drafter.confidence_head(conf_features).squeeze(-1)
    outputs = {
        "draft_logits": draft_logits,
        "labels": labels,
        "label_positions": label_pos_c,
        "confidence_logits": confidence_logits,
        "valid": in_range,
    }
    if target_distributions:
        outputs["target_logits"] = target_logits.gather(
            1, positions.clamp(max=length - 1).flatten(1)[..., None].expand(-1, -1, target_logits.shape[-1])
        ).view(batch, num, gamma, -1)
    return outputs
