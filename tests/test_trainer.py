"""DSparkTrainer on a tiny random target: it learns, checkpoints load as drafters, resume continues the schedule,
and two-process DDP (gloo) through `torchrun` trains the same drafter on both ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import distillation_rows, make_trainer, tiny_target
from transformers import AutoModel

from dspark_hf.evaluation import merge_stats, replay_rounds
from dspark_hf.training import initial_drafter, train_drafter

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.compat  # training runs on the GPU image's transformers 5.17 too


def test_trainer_lowers_the_loss_and_checkpoints_are_drafters(tmp_path):
    rows = distillation_rows(tiny_target(seed=7, sharp=4.0))
    trainer = make_trainer(tmp_path, 30, rows)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    logged = [entry for entry in trainer.state.log_history if "tau_estimate" in entry]
    assert logged and all(1.0 <= e["tau_estimate"] <= 5.0 and "acceptance_4" in e for e in logged)
    checkpoint = tmp_path / "checkpoint-15"
    assert not any(p.name.startswith("pytorch_model") for p in checkpoint.iterdir())
    loaded = AutoModel.from_pretrained(checkpoint)  # a checkpoint is a drafter folder, target not included
    assert type(loaded).__name__ == "DSparkDrafter"
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in trainer.drafter.parameters())
    trainer.save_model(str(tmp_path / "final"))
    final = AutoModel.from_pretrained(tmp_path / "final")
    for (name, a), (_, b) in zip(trainer.drafter.state_dict().items(), final.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_resume_continues_the_schedule_and_the_weights(tmp_path):
    """Resuming an 8-step run from its step-4 checkpoint ends where the uninterrupted run ended."""
    rows = distillation_rows(tiny_target(seed=7, sharp=4.0))
    full = make_trainer(tmp_path / "full", 8, rows)
    full.train()  # writes checkpoint-4 on the way
    resumed = make_trainer(tmp_path / "resumed", 8, rows, init_seed=1)  # another fresh init: the checkpoint must win
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    assert resumed.state.global_step == 8
    lrs = {e["step"]: e["learning_rate"] for e in full.state.log_history if "learning_rate" in e}
    resumed_lrs = {e["step"]: e["learning_rate"] for e in resumed.state.log_history if "learning_rate" in e}
    assert sorted(resumed_lrs) == list(range(1, 9))  # steps 1-4 restored from the checkpoint's state, 5-8 trained
    for step, lr in resumed_lrs.items():
        assert abs(lr - lrs[step]) < 1e-12, (step, lr, lrs[step])
    for (name, a), (_, b) in zip(full.drafter.state_dict().items(), resumed.drafter.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_training_goes_on_from_an_earlier_drafter(tmp_path):
    """`init`: a drafter's weights carry over (not its calibration); another Markov rank drops that head and the
    confidence head fed by it (a DFlash ablation from a DSpark backbone); a foreign drafter is refused."""
    target = tiny_target(seed=7, sharp=4.0)
    rows = distillation_rows(target)
    trained = make_trainer(tmp_path / "first", 6, rows, save_steps=10**6)
    trained.train()
    trained.drafter.config.confidence_temperatures = [2.0] * 4
    trained.save_model(str(tmp_path / "first"))
    saved = trained.drafter.state_dict()
    same = initial_drafter(target, tmp_path / "first", markov_rank=16, block_size=4)
    assert same.config.confidence_temperatures is None
    assert same.state_dict().keys() == saved.keys()
    for name, tensor in same.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    ablation = initial_drafter(target, tmp_path / "first", markov_rank=0, block_size=4)
    assert ablation.markov_in is None and ablation.confidence_head.weight.shape == (1, 32)
    for name, tensor in ablation.state_dict().items():
        if not name.startswith("confidence_head."):
            assert torch.equal(tensor, saved[name]), name
    with pytest.raises(ValueError, match="blocks of 4"):
        initial_drafter(target, tmp_path / "first", markov_rank=16, block_size=7)
    with pytest.raises(ValueError, match="fingerprint"):
        initial_drafter(tiny_target(seed=8), tmp_path / "first", markov_rank=16, block_size=4)
    go_on = train_drafter(target, rows, str(tmp_path / "ablation"), init=str(tmp_path / "first"), markov_rank=0,
                          block_size=4, loss_type="ce", num_anchors=8, max_steps=3, learning_rate=3e-3,
                          per_device_train_batch_size=4, use_cpu=True, disable_tqdm=True)  # fmt: skip
    assert go_on.state.global_step == 3
    final = AutoModel.from_pretrained(tmp_path / "ablation")
    assert final.config.markov_rank == 0
    assert not torch.equal(final.state_dict()["fc.weight"], saved["fc.weight"])  # trained on from the init


def test_two_process_ddp_through_torchrun(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_train.py"), str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # gradients were all-reduced: identical drafters
    assert ranks[0]["last_loss"] < 0.8 * ranks[0]["first_loss"]
    assert (tmp_path / "out" / "final" / "model.safetensors").is_file()  # written once, by rank 0


def test_a_trained_drafter_is_accepted_at_inference_as_in_training(tmp_path):
    """Train/inference consistency: what the training forward learned shows up in generate(), round for round."""
    rows = distillation_rows(tiny_target(seed=7, sharp=4.0))
    trainer = make_trainer(tmp_path, 150, rows, save_steps=10**6, logging_steps=50)
    untrained = trainer.drafter.eval()
    target = trainer.model.target
    prompt = torch.tensor([rows[0]["input_ids"][:4]])
    target.generate(prompt, assistant_model=untrained, max_new_tokens=28, do_sample=False, gating="fixed")
    assert untrained.stats.tau < 1.5
    trainer.train()
    drafter = trainer.drafter.eval()
    stats = []
    for row in rows[:8]:
        out = target.generate(
            torch.tensor([row["input_ids"][:4]]), assistant_model=drafter, max_new_tokens=28, do_sample=False,
            gating="fixed",
        )  # fmt: skip
        assert out[0].tolist() == row["input_ids"]  # lossless, and the rows are the target's greedy continuations
        replayed = replay_rounds(target, drafter, torch.tensor(row["input_ids"]), 4, 28, eos=set())
        assert replayed.accepted_per_round == drafter.stats.accepted_per_round
        assert replayed.verified_per_round == drafter.stats.verified_per_round
        stats.append(drafter.stats)
    assert merge_stats(stats).tau > 2.5, merge_stats(stats)
