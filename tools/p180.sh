#!/bin/bash
# P180 (../shared/BENCH.md) with the budget-fraction schedules as defaults, so the proxy is just
# MAX_WALLCLOCK_SECONDS=180 VAL_LOSS_EVERY=0. Usage, from the repository root on the GPU machine:
#   [VOCAB=1024] [SWEEP="7:6 6:6 8:1"] bash tools/p180.sh NAME SEED "ENV ..." [NAME SEED "ENV ..." ...]
# Shards: BENCH.md's split, tokenized with .bench/tokenizers/fineweb_${VOCAB}_bpe.model (VOCAB
# default 8192, train_gpt.py's), with the corpus's last 2,500 documents held back from training as
# a second validation set; each artifact is rescored on it (as its run scored, TTT included). SWEEP
# re-exports each run's weights as BITS:CLIP_SIGMAS with lzma (tools/requantize.py) and scores each
# export without sliding windows or TTT (8:any = int8+lzma, size only); HOLDOUT=0 skips the holdout
# score. Logs and summaries go to $RESULTS (default $OUT).
# Needs .bench/ (corpus/ and tokenizers/ copied from ../shared, see BENCH.md) carried to the GPU
# machine.
set -u; export PYTHONUNBUFFERED=1
VOCAB=${VOCAB:-8192}; RES=${RESULTS:-${OUT:-/tmp/p180_results}}; mkdir -p $RES
DATA=/tmp/p180_sp$VOCAB; HOLD=/tmp/p180_holdout_sp$VOCAB; TOK=.bench/tokenizers/fineweb_${VOCAB}_bpe.model
if [ ! -f $DATA/fineweb_val_000000.bin ]; then
  t0=$(date +%s)
  python3 data/build.py --out $DATA --holdout-docs 2500 --holdout-out $HOLD --tokenizer $TOK --val-docs 2500 \
    --quiet .bench/corpus/docs_0*.jsonl.xz > $RES/build_sp$VOCAB.txt 2>&1 || { cat $RES/build_sp$VOCAB.txt; exit 1; }
  echo "== build sp$VOCAB $(( $(date +%s) - t0 ))s"; tail -4 $RES/build_sp$VOCAB.txt
fi
common="VOCAB_SIZE=$VOCAB TOKENIZER_PATH=$TOK"
while [ $# -ge 3 ]; do
  name=$1; seed=$2; extra=$3; shift 3
  rid=${name}_s${seed}
  t0=$(date +%s)
  env MAX_WALLCLOCK_SECONDS=180 VAL_LOSS_EVERY=0 $common $extra SEED=$seed RUN_ID=$rid DATA_PATH=$DATA \
    torchrun --standalone --nproc_per_node=1 train_gpt.py > /tmp/$rid.out 2>&1
  rc=$?; echo "== $rid rc=$rc wall=$(( $(date +%s) - t0 ))s env: $common $extra"
  grep -E "^(step:[0-9]+/[0-9]+ val_|stopping_early|peak memory|Total submission size|roundtrip_without|final_.*roundtrip |sdpa_backend:)" /tmp/$rid.out | tail -12
  cp logs/$rid.txt $RES/ 2>/dev/null
  art=$(ls artifacts/${rid}_model.int*.ptz 2>/dev/null | head -1)
  [ $rc -eq 0 ] && [ -n "$art" ] || { tail -20 /tmp/$rid.out; continue; }  # never score an earlier run's files
  if [ "${HOLDOUT:-1}" != 0 ]; then
    t0=$(date +%s)
    env $common $extra EVAL_ARTIFACT=$art RUN_ID=${rid}_holdout DATA_PATH=$HOLD \
      torchrun --standalone --nproc_per_node=1 train_gpt.py > /tmp/${rid}_holdout.out 2>&1
    echo "== ${rid}_holdout rc=$? wall=$(( $(date +%s) - t0 ))s"
    grep -E "^(roundtrip_without|final_.*roundtrip )" /tmp/${rid}_holdout.out || tail -5 /tmp/${rid}_holdout.out
  fi
  [ -n "${SWEEP:-}" ] || continue
  t0=$(date +%s)
  for v in $SWEEP; do  # quantize and compress in parallel (CPU), then score in parallel (one GPU)
    b=${v%%:*}; c=${v##*:}; q=${rid}_q${b}s${c}
    env $common QUANT_BITS=$b QUANT_CLIP_SIGMAS=$c COMPRESSOR=lzma python3 tools/requantize.py \
      artifacts/${rid}_model.pt artifacts/${q}_model.int$b.ptz > /tmp/$q.req 2>&1 &
  done; wait
  for v in $SWEEP; do
    b=${v%%:*}; c=${v##*:}; q=${rid}_q${b}s${c}; cat /tmp/$q.req
    [ "$b" = 8 ] || ! grep -q "^requantize:" /tmp/$q.req && continue
    env $common $extra COMPILE=0 EVAL_STRIDE=0 TTT_EPOCHS=0 EVAL_ARTIFACT=artifacts/${q}_model.int$b.ptz RUN_ID=$q DATA_PATH=$DATA \
      python3 train_gpt.py > /tmp/$q.out 2>&1 &
  done; wait
  for v in $SWEEP; do
    b=${v%%:*}; c=${v##*:}; q=${rid}_q${b}s${c}; [ "$b" = 8 ] || ! grep -q "^requantize:" /tmp/$q.req && continue
    echo "$q: $(grep -E '^final_.*roundtrip ' /tmp/$q.out || tail -2 /tmp/$q.out)"
  done
  echo "== ${rid} sweep wall=$(( $(date +%s) - t0 ))s"
done
