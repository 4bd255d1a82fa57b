"""`evaluate` measurement: acceptance length τ and per-position acceptance of speculative decoding, from rounds.

Each input row is one round: `accepted` drafts out of `verified` drafts the target checked. Load it by path (no Hub):

    import evaluate
    from dspark_hf.evaluation import ACCEPTANCE_LENGTH
    acceptance = evaluate.load(str(ACCEPTANCE_LENGTH))
    acceptance.compute(accepted=[3, 0, 7], verified=[7, 7, 7], block_size=7)
    # {'tau': 4.33, 'per_position_acceptance': [0.67, 0.67, 0.67, 0.33, 0.33, 0.33, 0.33], 'rounds': 3, ...}
"""

import datasets
import evaluate

from dspark_hf.decoding.round import acceptance_length, position_acceptance

_DESCRIPTION = """Acceptance length τ of speculative decoding: tokens per target forward (accepted drafts + the target's
bonus token, averaged over rounds), and for each block position the share of rounds verifying it that accepted it."""

_INPUTS = """
Args:
    accepted: per round, the number of drafted tokens the target accepted (a prefix of the verified ones).
    verified: per round, the number of drafted tokens the target verified (>= accepted).
    block_size: block positions to report (default: the largest `verified`).
Returns:
    tau, per_position_acceptance (None where no round verified that position), rounds, accepted_tokens,
    verified_tokens.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class AcceptanceLength(evaluate.Measurement):
    def _info(self) -> evaluate.MeasurementInfo:
        return evaluate.MeasurementInfo(
            module_type="measurement",
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"accepted": datasets.Value("int64"), "verified": datasets.Value("int64")}),
        )

    def _compute(self, accepted: list[int], verified: list[int], block_size: int | None = None) -> dict:
        if any(a < 0 or a > v for a, v in zip(accepted, verified, strict=True)):
            raise ValueError("every round needs 0 <= accepted <= verified")
        block_size = block_size if block_size is not None else max(verified, default=0)
        return {
            "tau": acceptance_length(accepted),
            "per_position_acceptance": position_acceptance(accepted, verified, block_size),
            "rounds": len(accepted),
            "accepted_tokens": sum(accepted),
            "verified_tokens": sum(verified),
        }
