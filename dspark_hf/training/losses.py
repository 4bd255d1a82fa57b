"""The DSpark training loss (DESIGN §4).

Per block position k (0-based), weighted by exp(-k/4):
    0.1 · CE(draft, true next token) + 0.9 · TV(p_draft, p_target) + 1.0 · BCE(c_k, 1 - TV)
TV = ½‖p_draft − p_target‖₁ and 1 − TV is exactly the probability that speculative sampling accepts the draft at k,
so the confidence head learns the acceptance rate (target detached). `loss_type="ce"` is the DFlash ablation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CE_WEIGHT, TV_WEIGHT, BCE_WEIGHT = 0.1, 0.9, 1.0


def position_weights(block_size: int, device: torch.device | None = None) -> torch.Tensor:
    """exp(-(k-1)/4) for k = 1..γ: early positions matter most, since a later draft only counts if all before it do."""
    return torch.exp(-torch.arange(block_size, device=device, dtype=torch.float32) / 4.0)


def dspark_loss(
    draft_logits: torch.Tensor,
    target_logits: torch.Tensor,
    labels: torch.Tensor,
    confidence_logits: torch.Tensor,
    valid: torch.Tensor,
    loss_type: str = "dspark",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """draft_logits, target_logits (..., γ, V); labels, confidence_logits, valid (..., γ).

    Returns the weighted mean loss over valid positions and detached metrics: per-position estimated acceptance
    (mean 1 − TV), CE, TV and BCE.
    """
    if loss_type not in ("dspark", "ce"):
        raise ValueError(f"loss_type must be 'dspark' or 'ce', got {loss_type!r}")
    block = draft_logits.shape[-2]
    weights = position_weights(block, draft_logits.device) * valid.float()
    log_q = F.log_softmax(draft_logits.float(), dim=-1)
    ce = F.nll_loss(log_q.flatten(0, -2), labels.flatten().clamp_min(0), reduction="none").view(labels.shape)
    p_target = F.softmax(target_logits.float(), dim=-1)
    tv = 0.5 * (log_q.exp() - p_target).abs().sum(-1)
    acceptance = (1.0 - tv).detach().clamp(0.0, 1.0)
    bce = F.binary_cross_entropy_with_logits(confidence_logits.float(), acceptance, reduction="none")
    per_position = CE_WEIGHT * ce + TV_WEIGHT * tv + BCE_WEIGHT * bce if loss_type == "dspark" else ce
    denom = weights.sum().clamp_min(1e-8)
    loss = (per_position * weights).sum() / denom
    count = valid.float().flatten(0, -2).sum(0).clamp_min(1.0)
    metrics = {
        "acceptance_by_position": (acceptance * valid).flatten(0, -2).sum(0) / count,
        "ce": (ce * weights).sum().detach() / denom,
        "tv": (tv * weights).sum().detach() / denom,
        "bce": (bce * weights).sum().detach() / denom,
    }
    return loss, metrics


def expected_tau(acceptance_by_position: torch.Tensor) -> float:
    """τ implied by per-position acceptance rates a_k (given the prefix survived): 1 + Σ_k Π_{i≤k} a_i."""
    return 1.0 + float(torch.cumprod(acceptance_by_position.float(), 0).sum()) if len(acceptance_by_position) else 1.0
