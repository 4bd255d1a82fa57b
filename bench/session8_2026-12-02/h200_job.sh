#!/bin/bash
# session 8 H200 job: the CUDA kernel tests -> greedy tau replay of the shipped drafter alone and with prompt lookup
# (80 prompts per set) -> dspark bench on GSM8K, HumanEval, MT-Bench (plain, prompt lookup, DFlash ablation, DSpark,
# DSpark + lookup) -> the ablation's tau with lookup -> the real-target lossless tests on CUDA.
set -u
cd /tmp/repo
export PYTHONPATH=/tmp/site:/tmp/repo DSPARK_HF_CACHE=/tmp/c HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 HF_HOME=/tmp/hf
export TOKENIZERS_PARALLELISM=false
O=/tmp/out G=/tmp/g
mkdir -p $O
DR=/tmp/repo/model_cards/SmolLM2-135M-Instruct-DSpark DF=/tmp/dflash
D="python3 -m dspark_hf.cli"
SETS="$G/eval/gsm8k.jsonl $G/eval/humaneval.jsonl $G/eval/mt-bench.jsonl"
step() { echo "$(date -u +%T) $*" >> $O/progress; }
step start
nvidia-smi > $O/nvidia-smi.txt 2>&1
python3 -c "import sys,torch,transformers,triton;print(sys.version.split()[0],torch.__version__,transformers.__version__,triton.__version__)" > $O/versions.txt 2>&1
python3 -m pytest -q -p no:cacheprovider tests/test_markov_kernel.py > $O/markov_kernel_tests.log 2>&1
step "kernel tests rc $?"
for L in 0 10; do
  $D eval --data $SETS --limit 80 --max-new-tokens 256 --drafter $DR --teacher-forced --batch-size 80 \
    --prompt-lookup-tokens $L --out $O/h200_eval_dspark_lookup$L > $O/eval_dspark_lookup$L.log 2>&1
  step "eval dspark lookup $L rc $?"
done
for set in gsm8k humaneval mt-bench; do
  $D bench --data $G/eval/$set.jsonl --limit 3 --repeats 2 --drafter $DR --dflash-drafter $DF \
    --out $O/h200_bench_$set > $O/bench_$set.log 2>&1
  step "bench $set rc $?"
done
$D eval --data $SETS --limit 80 --max-new-tokens 256 --drafter $DF --teacher-forced --batch-size 80 \
  --prompt-lookup-tokens 10 --out $O/h200_eval_dflash_lookup10 > $O/eval_dflash_lookup10.log 2>&1
step "eval dflash lookup 10 rc $?"
python3 -m pytest -q -p no:cacheprovider tests/test_smollm2_lossless.py -k cuda > $O/smollm2_lossless_cuda.log 2>&1
step "lossless cuda tests rc $?"
step ALLDONE
