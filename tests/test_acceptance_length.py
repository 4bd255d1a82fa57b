"""The `acceptance_length` module for the `evaluate` library, loaded from its local path (no Hub)."""

from __future__ import annotations

import random

import pytest

from dspark_hf.evaluation import ACCEPTANCE_LENGTH

evaluate = pytest.importorskip("evaluate")


def random_rounds(seed: int, n: int, block: int) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    verified = [rng.randint(1, block) for _ in range(n)]
    return [rng.randint(0, v) for v in verified], verified


@pytest.fixture(scope="module")
def measure():
    return evaluate.load(str(ACCEPTANCE_LENGTH))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_definition_on_random_rounds(measure, seed):
    accepted, verified = random_rounds(seed, 200, 7)
    out = measure.compute(accepted=accepted, verified=verified, block_size=7)
    assert out["tau"] == pytest.approx(sum(a + 1 for a in accepted) / len(accepted))
    assert out["rounds"] == 200 and out["accepted_tokens"] == sum(accepted) and out["verified_tokens"] == sum(verified)
    for k, rate in enumerate(out["per_position_acceptance"]):
        reached = [a for a, v in zip(accepted, verified, strict=True) if v > k]
        assert rate == pytest.approx(sum(a > k for a in reached) / len(reached))


def test_batches_pool_rounds(measure):
    accepted, verified = random_rounds(3, 60, 5)
    whole = measure.compute(accepted=accepted, verified=verified, block_size=6)
    for start in range(0, 60, 25):
        measure.add_batch(accepted=accepted[start : start + 25], verified=verified[start : start + 25])
    assert measure.compute(block_size=6) == whole
    assert whole["per_position_acceptance"][5] is None  # no round verified a sixth draft


def test_rejects_more_accepted_than_verified(measure):
    with pytest.raises(ValueError, match="accepted <= verified"):
        measure.compute(accepted=[3], verified=[2])
