"""Calibrating the confidence head: one temperature per block position, fitted on held-out conversations.

The head is trained towards the acceptance probability 1 − TV(p_draft, p_target) at each position; after training it
is usually over- or under-confident by position. Dividing its logit by a fitted τ_k (stored in
`config.confidence_temperatures`, applied by both drafting paths) makes the prefix probabilities the gating and the
scheduler rely on match the measured acceptance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..modeling_dspark import DSparkDrafter
from .data import collate_batch
from .forward import training_blocks


@torch.no_grad()
def collect_confidences(
    drafter: DSparkDrafter,
    target,
    rows: list[dict[str, list[int]]],
    num_anchors: int = 64,
    batch_size: int = 4,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence logits and acceptance probabilities (1 − TV) at valid block positions: two (N, γ) tensors, NaN
    where a block position is not valid."""
    generator = torch.Generator(device=target.device).manual_seed(seed)
    logits, acceptance = [], []
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(target.device) for k, v in collate_batch(rows[start : start + batch_size]).items()}
        out = training_blocks(
            drafter, target, batch["input_ids"], batch["loss_mask"], batch["attention_mask"], num_anchors, generator
        )
        valid = out["valid"]
        q = F.softmax(out["draft_logits"].float(), -1)
        p = F.softmax(out["target_logits"].float(), -1)
        accept = 1.0 - 0.5 * (q - p).abs().sum(-1)
        nan = torch.tensor(float("nan"), device=accept.device)
        logits.append(torch.where(valid, out["confidence_logits"].float(), nan).flatten(0, 1))
        acceptance.append(torch.where(valid, accept.clamp(0, 1), nan).flatten(0, 1))
    return torch.cat(logits).cpu(), torch.cat(acceptance).cpu()


def fit_temperatures(logits: torch.Tensor, acceptance: torch.Tensor, steps: int = 100) -> list[float]:
    """Per position k, the τ_k > 0 minimising BCE(sigmoid(logit / τ_k), acceptance); 1.0 where data is lacking."""
    temperatures = []
    for k in range(logits.shape[1]):
        ok = ~logits[:, k].isnan()
        enough = ok.sum() >= 2
        temperatures.append(_fit_one(logits[ok, k].double(), acceptance[ok, k].double(), steps) if enough else 1.0)
    return temperatures


def _fit_one(z: torch.Tensor, a: torch.Tensor, steps: int) -> float:
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # LBFGS on log τ keeps τ positive
    optimizer = torch.optim.LBFGS([log_t], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z / log_t.exp(), a)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def calibration_error(logits: torch.Tensor, acceptance: torch.Tensor, temperatures=None, bins: int = 10) -> float:
    """Expected calibration error over all valid positions: |mean confidence − mean acceptance| per confidence bin,
    weighted by the bin's share."""
    ok = ~logits.isnan()
    scale = torch.tensor(temperatures or [1.0] * logits.shape[1], dtype=logits.dtype)
    conf = torch.sigmoid(logits / scale)[ok]
    acc = acceptance[ok]
    which = (conf * bins).long().clamp(max=bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += float(members.float().mean() * (conf[members].mean() - acc[members].mean()).abs())
    return error


def calibrate(drafter: DSparkDrafter, target, rows: list[dict[str, list[int]]], **collect_kwargs) -> dict:
    """Fit the per-position temperatures on `rows`, store them in `drafter.config`, and report the calibration error
    before and after."""
    drafter.bind(target)
    was_training = drafter.training
    logits, acceptance = collect_confidences(drafter.eval(), target, rows, **collect_kwargs)
    drafter.train(was_training)
    temperatures = fit_temperatures(logits, acceptance)
    drafter.config.confidence_temperatures = temperatures
    return {
        "temperatures": temperatures,
        "ece_before": calibration_error(logits, acceptance),
        "ece_after": calibration_error(logits, acceptance, temperatures),
        "positions": int((~logits.isnan()).sum()),
    }
