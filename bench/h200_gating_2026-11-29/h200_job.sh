#!/bin/bash
# session 5 H200 job: cost profile, then dspark bench (all peers + gating variants) on MT-Bench, HumanEval, GSM8K
cd /tmp/repo
export PYTHONPATH=/tmp/site:/tmp/repo DSPARK_HF_CACHE=/tmp/c HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 HF_HOME=/tmp/hf
O=/tmp/out; mkdir -p $O
DR=/tmp/repo/model_cards/SmolLM2-135M-Instruct-DSpark
nvidia-smi > $O/nvidia-smi.txt 2>&1
python -m dspark_hf.cli profile --drafter $DR --batch-sizes 1 2 4 8 --out $O/h200_profile > $O/profile.log 2>&1
echo "profile rc $?" >> $O/progress
for set in mt-bench humaneval gsm8k; do
  python -m dspark_hf.cli bench --data /tmp/repo/.gpu_data/eval/$set.jsonl --limit 4 --repeats 2 --gating fixed threshold \
    --profile-limit 1 --drafter $DR --dflash-drafter /tmp/abl --out $O/h200_bench_$set > $O/bench_$set.log 2>&1
  echo "bench $set rc $? $(date)" >> $O/progress
done
python -m pytest -q -x -p no:cacheprovider tests/test_smollm2_lossless.py -k cuda > $O/cuda_lossless.log 2>&1
echo "lossless rc $? $(date)" >> $O/progress
echo ALLDONE >> $O/progress
