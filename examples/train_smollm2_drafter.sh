#!/usr/bin/env bash
# The run behind model_cards/SmolLM2-135M-Instruct-DSpark: the DSpark drafter for SmolLM2-135M-Instruct and its
# DFlash ablation (Markov head off, CE loss) trained side by side on the same data, steps and batch, then τ of both
# on the shared eval sets. In stages, so that each fits one call on a rented GPU and can be re-run:
#
#   bash examples/train_smollm2_drafter.sh data     # ShareGPT prompts -> the target's own responses (WORKERS at once)
#   bash examples/train_smollm2_drafter.sh train    # both trainings at once for STEPS; re-run to resume after a cut
#   bash examples/train_smollm2_drafter.sh export   # bf16 drafter folders, ready for the Hub
#   bash examples/train_smollm2_drafter.sh eval     # τ (greedy, γ = 7, 256 new tokens) on GSM8K, HumanEval, MT-Bench
#
# The shipped drafter was trained on in several runs, each from the one before; `docs/training.md` gives its recipe
# and data. Its last run: DATA_SECONDS=300 STATIC=1 STEPS=2000 LR=3e-4 INIT=<the previous drafter> PROMPTS=<a JSONL
# of prompts> (14 336 conversations; 2 000 steps in ~240 s on an H200).
#
# Knobs (environment): WORK, PROMPTS ('sharegpt' or a JSONL file), WORKERS, BATCH, DATA_SECONDS, NEW_TOKENS, STATIC
# (set: `prepare-data --static-cache`, decoding compiled once into CUDA graphs), STEPS, LR,
# INIT (a drafter folder both trainings start from, to go on training on new data: the ablation keeps its backbone
# and drops its Markov head), EVAL_LIMIT, EVAL_BATCH, EVAL_DIR, DSPARK (the command; default `dspark`). On one H200
# the two trainings side by side ran 0.117 s per step each (4500 steps in 529 s); a 10-minute call holds ~5000 steps.
# One GPU is shared by time slices between processes: one generator with a large batch beats many small ones (37
# prompts/s at batch 1024), and the eval replays greedy rounds (`dspark eval --teacher-forced`) instead of running them.
set -euo pipefail
read -r -a dspark <<< "${DSPARK:-dspark}"
work=${WORK:-runs/smollm2}
prompts=${PROMPTS:-sharegpt}
workers=${WORKERS:-1}
eval_dir=${EVAL_DIR:-../shared/data/eval}
methods=(dspark dflash)
declare -A method_args=([dspark]="--markov-rank 128 --loss dspark" [dflash]="--markov-rank 0 --loss ce")
train_args=(--data "$work/data.jsonl" --batch-size 16 --num-anchors 64 --max-length 768 --lr "${LR:-6e-4}" --bf16
  --logging-steps 25 --save-steps 500)
[[ -n ${INIT:-} ]] && train_args+=(--init "$INIT")
mkdir -p "$work"

case ${1:?stage: data, train, export or eval} in
data)
  # prompts split round-robin over the workers; each writes its own resumable data.jsonl
  python3 - "$prompts" "$work/prompts" "$workers" <<'EOF'
import json, pathlib, sys
from dspark_hf.training.data import read_prompts
prompts, out, n = read_prompts(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
for i in range(n):
    (out / f"{i}.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts[i::n]))
print(f"{len(prompts)} prompts over {n} workers")
EOF
  for ((i = 0; i < workers; i++)); do
    # shellcheck disable=SC2086
    timeout "${DATA_SECONDS:-300}" "${dspark[@]}" prepare-data --prompts "$work/prompts/$i.jsonl" \
      --output "$work/data/$i" --dtype bfloat16 --batch-size "${BATCH:-1024}" --max-new-tokens "${NEW_TOKENS:-384}" \
      --max-prompt-tokens 384 ${STATIC:+--static-cache} > "$work/data_$i.log" 2>&1 &
  done
  wait || true  # a worker stopped by the time limit keeps every complete row
  python3 - "$work" <<'EOF'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
rows = [line for part in sorted(work.glob("data/*/data.jsonl")) for line in part.read_text().splitlines(keepends=True)
        if line.endswith("\n")]
(work / "data.jsonl").write_text("".join(rows))
tokens = sum(sum(json.loads(r)["loss_mask"]) for r in rows)
print(f"data: {len(rows)} conversations, {tokens} response tokens -> {work / 'data.jsonl'}")
EOF
  ;;
train)
  steps=${STEPS:-6000}
  echo "training both drafters for $steps steps"
  for m in "${methods[@]}"; do
    resume=()
    last=$(find "$work/$m" -maxdepth 1 -name 'checkpoint-*' 2>/dev/null | sort -V | tail -1 || true)
    [[ -n $last ]] && resume=(--resume "$last")
    # shellcheck disable=SC2086
    "${dspark[@]}" train "${train_args[@]}" ${method_args[$m]} --output "$work/$m" --steps "$steps" "${resume[@]}" \
      > "$work/train_$m.log" 2>&1 &
  done
  wait
  tail -n 4 "$work"/train_*.log
  ;;
export)
  for m in "${methods[@]}"; do
    python3 - "$work/$m" "$work/ship_$m" <<'EOF'
import shutil, sys, pathlib, torch
from transformers import AutoModel
import dspark_hf  # noqa: F401  (registers the dspark model type)
source, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
AutoModel.from_pretrained(source).to(torch.bfloat16).save_pretrained(out, max_shard_size="1GB")
for extra in ("calibration.json",):
    if (source / extra).exists():
        shutil.copy(source / extra, out / extra)
print(f"{out}: {sum(f.stat().st_size for f in out.iterdir()) / 2**20:.1f} MiB")
EOF
  done
  ;;
eval)
  # greedy rounds replayed on the target's own continuations (exact for greedy, tested against the real loop)
  for m in "${methods[@]}"; do
    "${dspark[@]}" eval --data "$eval_dir/gsm8k.jsonl" "$eval_dir/humaneval.jsonl" "$eval_dir/mt-bench.jsonl" \
      --limit "${EVAL_LIMIT:-80}" --max-new-tokens 256 --drafter "$work/ship_$m" --teacher-forced \
      --batch-size "${EVAL_BATCH:-80}" --out "$work/eval_$m" 2> "$work/eval_$m.log"
  done
  ;;
*)
  echo "unknown stage $1" >&2
  exit 2
  ;;
esac
