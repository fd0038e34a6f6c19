#!/bin/bash
# The device queue of session 4 (2026-11-29), one H200: every figure in results/p180_v4 comes from
# it. It runs from a private copy of the repository and writes console output and logs to /tmp/q.
# Started with: setsid nohup bash results/p180_v4/queue.sh > /dev/null 2>&1 < /dev/null &
set -u; export PYTHONUNBUFFERED=1
Q=/tmp/q; mkdir -p $Q; rm -rf /tmp/repo; cp -r . /tmp/repo; cd /tmp/repo
exec >> $Q/console.txt 2>&1
export RESULTS=$Q
echo "== queue start $(date -u +%T) $(nvidia-smi --query-gpu=name --format=csv,noheader)"
python3 -c "import torch; print('torch', torch.__version__)"
# 1. The defaults as one command (sp8192, int7 + lzma, sliding stride 256), then the same artifact
#    scored at stride 64 (paired: same weights).
bash tools/p180.sh def 1337 ""
t0=$(date +%s)
EVAL_ARTIFACT=$(ls artifacts/def_s1337_model.int*.ptz) EVAL_STRIDE=64 RUN_ID=def_s1337_stride64 \
  DATA_PATH=/tmp/p180_sp8192 TOKENIZER_PATH=.bench/tokenizers/fineweb_8192_bpe.model \
  torchrun --standalone --nproc_per_node=1 train_gpt.py > /tmp/stride64.out 2>&1
echo "== def_s1337_stride64 rc=$? wall=$(( $(date +%s) - t0 ))s"
grep -E "^(final_|roundtrip_without)" /tmp/stride64.out; cp logs/def_s1337_stride64.txt $Q/ 2>/dev/null
# 2. Each off switch alone, seed 1337 (against def_s1337), most promising first.
export HOLDOUT=0
bash tools/p180.sh leaky 1337 "MLP_LEAKY_SLOPE=0.5"
bash tools/p180.sh qk5 1337 "QK_GAIN_INIT=5"
bash tools/p180.sh wd 1337 "MUON_WEIGHT_DECAY=0.04"
bash tools/p180.sh xsa 1337 "XSA=1"
bash tools/p180.sh rope16 1337 "ROPE_DIMS=16"
bash tools/p180.sh lnscale 1337 "LN_SCALE=1"
bash tools/p180.sh mom97 1337 "MUON_MOMENTUM=0.97"
HOLDOUT=1 bash tools/p180.sh def 1338 ""
echo "== queue done $(date -u +%T)"; touch $Q/done
