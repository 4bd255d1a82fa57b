#!/bin/bash
# session 8 H200 job 2 (the first job's machine was released mid-way; the scheduler then gained its convex cost
# envelope): dspark bench on HumanEval, MT-Bench, GSM8K (plain, prompt lookup, DFlash ablation, DSpark, DSpark + lookup).
set -u
cd /tmp/repo
export PYTHONPATH=/tmp/site:/tmp/repo DSPARK_HF_CACHE=/tmp/c HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 HF_HOME=/tmp/hf
export TOKENIZERS_PARALLELISM=false
O=/tmp/out G=/tmp/g
mkdir -p $O
DR=/tmp/repo/model_cards/SmolLM2-135M-Instruct-DSpark DF=/tmp/dflash
D="python3 -m dspark_hf.cli"
step() { echo "$(date -u +%T) $*" >> $O/progress; }
step start
nvidia-smi > $O/nvidia-smi.txt 2>&1
python3 -c "import sys,torch,transformers,triton;print(sys.version.split()[0],torch.__version__,transformers.__version__,triton.__version__)" > $O/versions.txt 2>&1
for set in humaneval mt-bench gsm8k; do
  $D bench --data $G/eval/$set.jsonl --limit 3 --repeats 2 --profile-limit 1 --drafter $DR --dflash-drafter $DF \
    --out $O/h200_bench_$set > $O/bench_$set.log 2>&1
  step "bench $set rc $?"
done
step ALLDONE
