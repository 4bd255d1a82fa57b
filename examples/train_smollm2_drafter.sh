#!/usr/bin/env bash
# Train the SmolLM2-135M-Instruct DSpark drafter and its DFlash ablation on the same data and budget, then measure τ
# on the shared eval sets. Meant for one GPU; every step can be re-run and continues where it stopped.
#   bash examples/train_smollm2_drafter.sh [WORKDIR] [PROMPTS] [STEPS]
set -euo pipefail
work=${1:-runs/smollm2}
prompts=${2:-20000}
steps=${3:-20000}
eval_dir=${DSPARK_EVAL_DIR:-../shared/data/eval}

dspark prepare-data --prompts sharegpt --limit "$prompts" --max-new-tokens 512 --batch-size 64 --output "$work/data"
common=(--data "$work/data" --steps "$steps" --batch-size 16 --lr 6e-4 --num-anchors 64 --max-length 1024 --save-steps 2000)
dspark train "${common[@]}" --output "$work/dspark" --markov-rank 128 --loss dspark
dspark train "${common[@]}" --output "$work/dflash" --markov-rank 0 --loss ce
for set in gsm8k humaneval mt-bench; do
  for drafter in dspark dflash; do
    dspark eval --data "$eval_dir/$set.jsonl" --max-new-tokens 256 --drafter "$work/$drafter" --json \
      | tail -n 1 > "$work/eval_${drafter}_${set}.json"
  done
done
