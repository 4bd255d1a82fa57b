"""Stand-in for the `evaluate` library on the H200 image, which lacks it: `load()` returns an accumulator that computes
what `dspark_hf/evaluation/acceptance_length` computes, with the same functions (used by h200_job.sh's eval stage).
As first run (13:44 UTC) `compute()` did not clear the rounds added before, as `evaluate` does, so each set's row of
that eval pooled the sets before it; bench/README.md gives the figures taken apart. Cleared now."""

from dspark_hf.generation import acceptance_length, position_acceptance


class _AcceptanceLength:
    def __init__(self) -> None:
        self.accepted: list[int] = []
        self.verified: list[int] = []

    def add_batch(self, accepted: list[int], verified: list[int]) -> None:
        self.accepted += list(accepted)
        self.verified += list(verified)

    def compute(self, block_size: int | None = None) -> dict:
        block_size = block_size if block_size is not None else max(self.verified, default=0)
        accepted, verified = self.accepted, self.verified
        self.accepted, self.verified = [], []
        return {
            "tau": acceptance_length(accepted),
            "per_position_acceptance": position_acceptance(accepted, verified, block_size),
            "rounds": len(accepted),
            "accepted_tokens": sum(accepted),
            "verified_tokens": sum(verified),
        }


def load(path: str) -> _AcceptanceLength:
    return _AcceptanceLength()
