#!/bin/bash
# The first v2 benchmark queue (2026-12-01, one H200): baselines on the v2 corpus (issue
# "Benchmark v2"). Every figure in results/v2_baselines comes from it. It runs from a private
# copy of the repository (later device calls re-send the working tree) and writes its console
# output and logs to /tmp/q, then touches /tmp/q/done. Needs the corpus staged in /tmp/corpus
# (README, Benchmark). Started with:
#   setsid nohup bash results/v2_baselines/queue.sh > /dev/null 2>&1 < /dev/null &
# Order = priority, as the session's 30 minutes of device time may end first: the P600v2 curve of
# the defaults (does v2 stop the overfitting?), the artifact after P60 and P180 (with P600: the size
# against training length), then the seed environment and second seeds.
set -u; export PYTHONUNBUFFERED=1
Q=/tmp/q; mkdir -p $Q; rm -rf /tmp/repo; cp -r . /tmp/repo; cd /tmp/repo
exec >> $Q/console.txt 2>&1
export RESULTS=$Q
echo "== queue start $(date -u +%T) $(nvidia-smi --query-gpu=name --format=csv,noheader) $(git log --oneline -1 | cut -c1-60)"
python3 -c "import torch; print('torch', torch.__version__)"
# The README's seed environment without its data paths (the runner sets those for VOCAB=1024).
SEED_ENV="SDPA_BACKEND=flash WARMDOWN_FRAC=0 MUON_MOMENTUM_WARMUP_FRAC=0 EVAL_STRIDE=0 MLP_LEAKY_SLOPE=0 PARALLEL_LAYERS=0
 RECUR_LAYERS=0 TTT_EPOCHS=0 QK_GAIN_INIT=1.5 MUON_WEIGHT_DECAY=0 MUON_ROW_NORM=0 QUANT_BITS=8 QUANT_GPTQ=0 COMPRESSOR=zlib MLP_MULT=2"
bash tools/proxy.sh 600 def 1337 "VAL_LOSS_EVERY=250"
HOLDOUT=0 bash tools/proxy.sh 60 def 1337 "TTT_EPOCHS=0 EVAL_STRIDE=0"  # size only: scoring settings change no weight
bash tools/proxy.sh 180 def 1337 ""
VOCAB=1024 bash tools/proxy.sh 180 seed 1337 "$SEED_ENV"
bash tools/proxy.sh 180 def 1338 ""
VOCAB=1024 bash tools/proxy.sh 180 seed 1338 "$SEED_ENV"
echo "== queue done $(date -u +%T)"; touch $Q/done
