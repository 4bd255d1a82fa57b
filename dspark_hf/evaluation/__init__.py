"""Evaluation: acceptance of a drafter on prompt sets (`dspark eval`), speed against peers (`dspark bench`), the
`acceptance_length` module for the `evaluate` library, and the markdown / PNG reports both write."""

from pathlib import Path

from .acceptance import (
    evaluate_acceptance,
    merge_stats,
    read_eval_prompts,
    replay_rounds,
    summarize_rounds,
    teacher_forced_acceptance,
)

ACCEPTANCE_LENGTH = Path(__file__).parent / "acceptance_length"  # evaluate.load(str(ACCEPTANCE_LENGTH))

__all__ = [
    "ACCEPTANCE_LENGTH",
    "evaluate_acceptance",
    "merge_stats",
    "read_eval_prompts",
    "replay_rounds",
    "summarize_rounds",
    "teacher_forced_acceptance",
]
