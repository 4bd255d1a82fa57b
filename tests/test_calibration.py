"""Confidence calibration: per-position temperatures recover a known miscalibration and lower the error."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import distillation_rows, make_trainer, tiny_target
from transformers import AutoModel

from dspark_hf.training import train_drafter
from dspark_hf.training.calibration import calibrate, calibration_error, fit_temperatures

pytestmark = pytest.mark.compat  # training runs on the GPU image's transformers 5.17 too


def test_fit_recovers_known_temperatures():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 3, generator=g) * 4
    true = torch.tensor([0.5, 2.0, 3.0])
    acceptance = torch.sigmoid(logits / true)
    logits[::7, 2] = float("nan")  # invalid positions are skipped
    fitted = fit_temperatures(logits, acceptance)
    assert torch.allclose(torch.tensor(fitted), true, rtol=1e-3), fitted
    assert calibration_error(logits, acceptance, fitted) < 1e-3 < calibration_error(logits, acceptance)


def test_calibrate_a_trained_drafter(tmp_path):
    target = tiny_target(seed=7, sharp=4.0)
    rows = distillation_rows(target, n=24)
    trainer = make_trainer(tmp_path / "run", 20, rows[:16])
    trainer.train()
    drafter = trainer.drafter
    with torch.no_grad():  # an over-confident head: the fit must cool it down
        drafter.confidence_head.weight.mul_(6.0)
        drafter.confidence_head.bias.mul_(6.0)
    report = calibrate(drafter, trainer.model.target, rows[16:], num_anchors=8)
    assert report["ece_after"] < 0.5 * report["ece_before"], report
    assert report["positions"] > 50 and all(t > 1.5 for t in report["temperatures"]), report
    drafter.save_pretrained(tmp_path / "calibrated")
    loaded = AutoModel.from_pretrained(tmp_path / "calibrated")
    assert loaded.config.confidence_temperatures == report["temperatures"]


def test_train_drafter_calibrates_on_held_out_rows(tmp_path):
    target = tiny_target(seed=7, sharp=4.0)
    rows = distillation_rows(target, n=20)
    trainer = train_drafter(
        target, rows[:16], str(tmp_path), markov_rank=8, block_size=4, num_anchors=8, calibration_rows=rows[16:],
        max_steps=6, per_device_train_batch_size=4, use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    report = json.loads((tmp_path / "calibration.json").read_text())
    assert report == trainer.calibration and len(report["temperatures"]) == 4
    assert AutoModel.from_pretrained(tmp_path).config.confidence_temperatures == report["temperatures"]


def test_the_ce_ablation_is_not_calibrated(tmp_path):
    """Its loss never trains the confidence head: fitting temperatures to an untrained head only yields nonsense."""
    target = tiny_target(seed=7, sharp=4.0)
    rows = distillation_rows(target, n=20)
    trainer = train_drafter(
        target, rows[:16], str(tmp_path), markov_rank=0, block_size=4, num_anchors=8, loss_type="ce",
        calibration_rows=rows[16:], max_steps=2, per_device_train_batch_size=4, use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    assert trainer.calibration is None and not (tmp_path / "calibration.json").exists()
    assert AutoModel.from_pretrained(tmp_path).config.confidence_temperatures is None
