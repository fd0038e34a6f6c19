#!/bin/bash
# The device queue of session 5 (2026-11-29), one H200: every figure in results/p180_v5 comes from
# it. It runs from a private copy of the repository and writes console output and logs to /tmp/q.
# Started with: setsid nohup bash results/p180_v5/queue.sh > /dev/null 2>&1 < /dev/null &
set -u; export PYTHONUNBUFFERED=1
Q=/tmp/q; mkdir -p $Q; rm -rf /tmp/repo; cp -r . /tmp/repo; cd /tmp/repo
exec >> $Q/console.txt 2>&1
export RESULTS=$Q HOLDOUT=0
common="VOCAB_SIZE=8192 TOKENIZER_PATH=.bench/tokenizers/fineweb_8192_bpe.model DATA_PATH=/tmp/p180_sp8192"
echo "== queue start $(date -u +%T) $(nvidia-smi --query-gpu=name --format=csv,noheader)"
python3 -c "import torch; print('torch', torch.__version__)"
# On one run's weights (paired): GPTQ vs round-to-nearest exports, each scored without sliding
# windows (the run's own int7 clip-6 artifact is the baseline: its roundtrip_without_sliding line),
# then score-first TTT on the run's own artifact (baseline: its final sliding score).
paired() {
  rid=$1; t0=$(date +%s)
  for v in R:6:12.85 G:7:6 G:6:12.85 G:6:6; do
    IFS=: read m b c <<< "$v"; g=$([ $m = G ] && echo 1 || echo 0); q=${rid}_${m}${b}s${c}
    env $common QUANT_GPTQ=$g QUANT_BITS=$b QUANT_CLIP_SIGMAS=$c COMPRESSOR=lzma python3 tools/requantize.py \
      artifacts/${rid}_model.pt artifacts/${q}_model.int$b.ptz > /tmp/$q.req 2>&1 &
  done; wait
  for v in R:6:12.85 G:7:6 G:6:12.85 G:6:6; do
    IFS=: read m b c <<< "$v"; q=${rid}_${m}${b}s${c}; cat /tmp/$q.req
    grep -q "^requantize:" /tmp/$q.req || continue
    env $common COMPILE=0 EVAL_STRIDE=0 EVAL_ARTIFACT=artifacts/${q}_model.int$b.ptz RUN_ID=$q \
      python3 train_gpt.py > /tmp/$q.out 2>&1 &
  done; wait
  for v in R:6:12.85 G:7:6 G:6:12.85 G:6:6; do
    IFS=: read m b c <<< "$v"; q=${rid}_${m}${b}s${c}
    echo "$q: $(grep -E '^final_.*roundtrip ' /tmp/$q.out || tail -3 /tmp/$q.out)"
  done
  echo "== ${rid} gptq wall=$(( $(date +%s) - t0 ))s"
  t0=$(date +%s)
  env $common TTT_EPOCHS=3 EVAL_ARTIFACT=$(ls artifacts/${rid}_model.int7.ptz) RUN_ID=${rid}_ttt3 \
    torchrun --standalone --nproc_per_node=1 train_gpt.py > /tmp/${rid}_ttt3.out 2>&1
  echo "== ${rid}_ttt3 rc=$? wall=$(( $(date +%s) - t0 ))s"
  grep -E "^(ttt |roundtrip_without|final_|eval)" /tmp/${rid}_ttt3.out || tail -20 /tmp/${rid}_ttt3.out
  cp logs/${rid}_*.txt $Q/ 2>/dev/null
}
bash tools/p180.sh def 1337 ""
paired def_s1337
bash tools/p180.sh xrl 1337 "XSA=1 ROPE_DIMS=16 LN_SCALE=1"
bash tools/p180.sh def 1338 ""
paired def_s1338
bash tools/p180.sh xrl 1338 "XSA=1 ROPE_DIMS=16 LN_SCALE=1"
bash tools/p180.sh wd 1337 "MUON_WEIGHT_DECAY=0.04"
bash tools/p180.sh mom97 1337 "MUON_MOMENTUM=0.97"
echo "== queue done $(date -u +%T)"; touch $Q/done
