#!/bin/bash
# session 10 H200 job: new ShareGPT data (code and arithmetic turns first, see h200_prompts.py) -> DSpark and the DFlash
# ablation trained on from the shipped drafter -> export (checkpoints packed first, so they come back even if the
# machine goes) -> greedy τ replay, 80 prompts per set -> dspark bench on GSM8K, HumanEval, MT-Bench.
set -u
cd /tmp/repo
G=/tmp/g O=/tmp/out W=/tmp/run
export PYTHONPATH=$G/site:/tmp/repo DSPARK_HF_CACHE=$G/c HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 HF_HOME=/tmp/hf
export TOKENIZERS_PARALLELISM=false
mkdir -p $O/ckpt $W
DR=/tmp/repo/model_cards/SmolLM2-135M-Instruct-DSpark
D="python3 -m dspark_hf.cli"
SETS="$G/eval/gsm8k.jsonl $G/eval/humaneval.jsonl $G/eval/mt-bench.jsonl"
step() { echo "$(date -u +%T) $*" >> $O/progress; }
step start
nvidia-smi > $O/nvidia-smi.txt 2>&1
python3 -c "import sys,torch,transformers,triton;print(sys.version.split()[0],torch.__version__,transformers.__version__,triton.__version__)" > $O/versions.txt 2>&1
(time WORK=$W PROMPTS=$G/prompts_session10.jsonl DATA_SECONDS=${DATA_SECONDS:-240} DSPARK="$D" \
  bash examples/train_smollm2_drafter.sh data) > $O/data_stage.txt 2>&1
step "data rc $?"
(time WORK=$W STEPS=${STEPS:-3000} LR=3e-4 INIT=$DR DSPARK="$D" bash examples/train_smollm2_drafter.sh train) \
  > $O/train_stage.txt 2>&1
step "train rc $?"
for m in dspark dflash; do tail -n 30 $W/train_$m.log > $O/train_${m}_tail.txt; cp $W/$m/trainer_state.json $O/${m}_trainer_state.json
  cp $W/$m/calibration.json $O/${m}_calibration.json 2>/dev/null; done
WORK=$W DSPARK="$D" bash examples/train_smollm2_drafter.sh export > $O/export.txt 2>&1
step "export rc $?"
(cd $W && tar cf - ship_dspark ship_dflash | split -b 15M -d - $O/ckpt/ckpt.tar.part)
(cd $W && sha256sum ship_*/model*.safetensors > $O/ckpt_sha256.txt)
step "ckpt packed"
for L in 0 10; do
  $D eval --data $SETS --limit 80 --max-new-tokens 256 --drafter $W/ship_dspark --teacher-forced --batch-size 80 \
    --prompt-lookup-tokens $L --out $O/h200_eval_dspark_lookup$L > $O/eval_dspark_lookup$L.log 2>&1
  step "eval dspark lookup $L rc $?"
done
$D eval --data $SETS --limit 80 --max-new-tokens 256 --drafter $W/ship_dflash --teacher-forced --batch-size 80 \
  --out $O/h200_eval_dflash_lookup0 > $O/eval_dflash_lookup0.log 2>&1
step "eval dflash rc $?"
for set in gsm8k humaneval mt-bench; do
  $D bench --data $G/eval/$set.jsonl --limit 3 --repeats 2 --profile-limit 1 --drafter $W/ship_dspark \
    --dflash-drafter $W/ship_dflash --out $O/h200_bench_$set > $O/bench_$set.log 2>&1
  step "bench $set rc $?"
done
$D eval --data $SETS --limit 80 --max-new-tokens 256 --drafter $W/ship_dspark --teacher-forced --batch-size 80 \
  --prompt-lookup-tokens 16 --out $O/h200_eval_dspark_lookup16 > $O/eval_dspark_lookup16.log 2>&1
step "eval dspark lookup 16 rc $?"
step ALLDONE
