#!/usr/bin/env bash
# Plain generate(), prompt lookup, the DFlash ablation and DSpark side by side on the shared eval sets, as recorded in
# bench/ (json + md + png per set), with DSpark under each gating policy: its default (the scheduler, row `dspark`),
# fixed L = γ and the confidence threshold. The device's cost profile comes first (batch 1, measured once per device
# and cached; the scheduler reads it).
# DFLASH names the ablation's folder (not shipped; without it that row is left out).
#   bash examples/benchmark.sh [OUT_PREFIX]   # env: LIMIT (3), REPEATS (2), NEW_TOKENS (256), DEVICE, DFLASH, SETS,
#                                             # COMPILED (1; 0 leaves out plain_compiled, whose compile takes minutes)
set -euo pipefail
out=${1:-bench/run}
eval_dir=${EVAL_DIR:-../shared/data/eval}
extra=()
[[ -n ${DFLASH:-} ]] && extra+=(--dflash-drafter "$DFLASH")
[[ -n ${DEVICE:-} ]] && extra+=(--device "$DEVICE")
[[ ${COMPILED:-1} == 0 ]] && extra+=(--no-compiled)
dspark profile --cached --batch-sizes 1 ${DEVICE:+--device "$DEVICE"} --out "${out}_profile"  # what generate() uses
for set in ${SETS:-gsm8k humaneval mt-bench}; do
  dspark bench --data "$eval_dir/$set.jsonl" --limit "${LIMIT:-3}" --repeats "${REPEATS:-2}" \
    --max-new-tokens "${NEW_TOKENS:-256}" --gating fixed threshold "${extra[@]}" --out "${out}_$set"
done
