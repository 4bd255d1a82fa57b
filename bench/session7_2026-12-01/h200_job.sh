#!/bin/bash
# session 7 H200 job: new ShareGPT data -> DSpark and the DFlash ablation trained on from the shipped drafter ->
# export -> greedy τ replay (new DSpark, new ablation, shipped) -> dspark bench on GSM8K, HumanEval, MT-Bench.
set -u
cd /tmp/repo
export PYTHONPATH=/tmp/site:/tmp/repo DSPARK_HF_CACHE=/tmp/c HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 HF_HOME=/tmp/hf
export TOKENIZERS_PARALLELISM=false
O=/tmp/out W=/tmp/run G=/tmp/g
mkdir -p $O $W
DR=/tmp/repo/model_cards/SmolLM2-135M-Instruct-DSpark
D="python3 -m dspark_hf.cli"
step() { echo "$(date -u +%T) $*" >> $O/progress; }
step start
nvidia-smi > $O/nvidia-smi.txt 2>&1
python3 -c "import sys,torch,transformers,triton;print(sys.version.split()[0],torch.__version__,transformers.__version__,triton.__version__)" > $O/versions.txt 2>&1
(time WORK=$W PROMPTS=$G/prompts.jsonl DATA_SECONDS=270 DSPARK="$D" bash examples/train_smollm2_drafter.sh data) > $O/data_stage.txt 2>&1
step "data rc $?"
(time WORK=$W STEPS=4000 LR=3e-4 INIT=$DR DSPARK="$D" bash examples/train_smollm2_drafter.sh train) > $O/train_stage.txt 2>&1
step "train rc $?"
for m in dspark dflash; do tail -n 30 $W/train_$m.log > $O/train_${m}_tail.txt; cp $W/$m/trainer_state.json $O/${m}_trainer_state.json 2>/dev/null
  cp $W/$m/calibration.json $O/${m}_calibration.json 2>/dev/null; cp $W/$m/config.json $O/${m}_config.json 2>/dev/null; done
WORK=$W DSPARK="$D" bash examples/train_smollm2_drafter.sh export > $O/export.txt 2>&1
step "export rc $?"
(cd $W && tar cf - ship_dspark ship_dflash | split -b 15M -d - $O/ckpt.tar.part)
step "ckpt packed"
WORK=$W EVAL_DIR=$G/eval EVAL_LIMIT=80 EVAL_BATCH=80 DSPARK="$D" bash examples/train_smollm2_drafter.sh eval
$D eval --data $G/eval/gsm8k.jsonl $G/eval/humaneval.jsonl $G/eval/mt-bench.jsonl --limit 80 --max-new-tokens 256 \
  --drafter $DR --teacher-forced --batch-size 80 --out $W/eval_shipped 2> $W/eval_shipped.log
cp $W/eval_* $O/ 2>/dev/null
step "eval done"
for set in gsm8k humaneval mt-bench; do
  $D bench --data $G/eval/$set.jsonl --limit 3 --repeats 2 --drafter $W/ship_dspark --dflash-drafter $W/ship_dflash \
    --out $O/h200_bench_$set > $O/bench_$set.log 2>&1
  step "bench $set rc $?"
done
python3 -m pytest -q -p no:cacheprovider tests/test_markov_kernel.py > $O/markov_kernel_tests.log 2>&1
step "kernel tests rc $?"
step ALLDONE
