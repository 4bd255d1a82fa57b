"""Run by test_trainer.py under `torchrun --nproc_per_node=2`: the same Trainer code, two CPU processes (gloo)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from helpers import distillation_rows, make_trainer, tiny_target

out = Path(sys.argv[1])
rows = distillation_rows(tiny_target(seed=7, sharp=4.0), n=32)
trainer = make_trainer(out / "out", 20, rows, ddp_backend="gloo", per_device_train_batch_size=2)
trainer.train()
trainer.save_model(str(out / "out" / "final"))
losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
checksum = sum(float(p.double().sum()) * (i + 1) for i, p in enumerate(trainer.drafter.parameters()))
rank = trainer.args.process_index
(out / f"rank{rank}.json").write_text(
    json.dumps(
        {
            "world_size": trainer.args.world_size,
            "checksum": round(checksum, 6),
            "first_loss": sum(losses[:3]) / 3,
            "last_loss": sum(losses[-3:]) / 3,
            "threads": torch.get_num_threads(),
        }
    )
)
# leave the process group before exit: a gloo group left to interpreter teardown once aborted rank 1 after its work
# was done ("terminate called without an active exception", CI of session 13)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
