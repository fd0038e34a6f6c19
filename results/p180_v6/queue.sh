#!/bin/bash
# The device queue of session 6 (2026-11-29), one H200: every figure in results/p180_v6 comes from
# it. It runs from a private copy of the repository and writes console output and logs to /tmp/q.
# Started with: setsid nohup bash results/p180_v6/queue.sh > /dev/null 2>&1 < /dev/null &
# Order = priority (the device time may end first): the defaults with their holdout score (TTT
# included), TTT's settings on that artifact (paired), then one switch per run against it.
set -u; export PYTHONUNBUFFERED=1
Q=/tmp/q; mkdir -p $Q; rm -rf /tmp/repo; cp -r . /tmp/repo; cd /tmp/repo
exec >> $Q/console.txt 2>&1
export RESULTS=$Q HOLDOUT=0
common="VOCAB_SIZE=8192 TOKENIZER_PATH=.bench/tokenizers/fineweb_8192_bpe.model DATA_PATH=/tmp/p180_sp8192"
echo "== queue start $(date -u +%T) $(nvidia-smi --query-gpu=name --format=csv,noheader) $(git log --oneline -1)"
python3 -c "import torch; print('torch', torch.__version__)"
# Score-first TTT settings on one artifact (paired with the run's own TTT_EPOCHS=3 TTT_LR=0.005
# score), four processes at once on the GPU: their eval_time is not a timing.
ttt_sweep() {
  rid=$1; t0=$(date +%s)
  for v in 1:0.005 5:0.005 3:0.01 3:0.0025; do
    e=${v%%:*}; l=${v##*:}; q=${rid}_ttt${e}_lr${l}
    env $common TTT_EPOCHS=$e TTT_LR=$l EVAL_ARTIFACT=artifacts/${rid}_model.int7.ptz RUN_ID=$q \
      python3 train_gpt.py > /tmp/$q.out 2>&1 &
  done; wait
  for v in 1:0.005 5:0.005 3:0.01 3:0.0025; do
    e=${v%%:*}; l=${v##*:}; q=${rid}_ttt${e}_lr${l}
    echo "$q: $(grep -E '^final_.*roundtrip_exact ' /tmp/$q.out || tail -3 /tmp/$q.out)"
    cp logs/$q.txt $Q/ 2>/dev/null
  done
  echo "== ${rid} ttt_sweep wall=$(( $(date +%s) - t0 ))s"
}
HOLDOUT=1 bash tools/p180.sh def 1337 ""
ttt_sweep def_s1337
bash tools/p180.sh gptq 1337 "QUANT_GPTQ=1"
bash tools/p180.sh par3 1337 "PARALLEL_LAYERS=3"
bash tools/p180.sh rown 1337 "MUON_ROW_NORM=1"
bash tools/p180.sh wd 1337 "MUON_WEIGHT_DECAY=0.04"
bash tools/p180.sh gptq 1338 "QUANT_GPTQ=1"
bash tools/p180.sh def 1338 ""
echo "== queue done $(date -u +%T)"; touch $Q/done
