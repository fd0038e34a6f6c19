#!/bin/bash
# P180 (../shared/BENCH.md) with the budget-fraction schedules as defaults, so the proxy is just
# MAX_WALLCLOCK_SECONDS=180 VAL_LOSS_EVERY=0. Usage, from the repository root on the GPU machine:
#   bash tools/p180.sh NAME SEED "ENV ..." [NAME SEED "ENV ..." ...]
# Shards: BENCH.md's split, with the corpus's last 2,500 documents held back from training as a
# second validation set (/tmp/p180_holdout); each artifact is rescored on it (COMPILE=0).
# Needs .bench/ (corpus/ and tokenizers/ copied from ../shared, see BENCH.md) carried to the GPU machine.
set -u; export PYTHONUNBUFFERED=1
DATA=/tmp/p180_sp1024; HOLD=/tmp/p180_holdout; TOK=.bench/tokenizers/fineweb_1024_bpe.model
if [ ! -f $DATA/fineweb_val_000000.bin ]; then
  t0=$(date +%s)
  python3 data/build.py --out $DATA --holdout-docs 2500 --holdout-out $HOLD --tokenizer $TOK --val-docs 2500 \
    --quiet .bench/corpus/docs_0*.jsonl.xz > ${OUT:-/tmp}/build.txt 2>&1 || { cat ${OUT:-/tmp}/build.txt; exit 1; }
  echo "== build $(( $(date +%s) - t0 ))s"; tail -4 ${OUT:-/tmp}/build.txt
fi
while [ $# -ge 3 ]; do
  name=$1; seed=$2; extra=$3; shift 3
  rid=${name}_s${seed}
  t0=$(date +%s)
  env MAX_WALLCLOCK_SECONDS=180 VAL_LOSS_EVERY=0 $extra SEED=$seed RUN_ID=$rid DATA_PATH=$DATA TOKENIZER_PATH=$TOK \
    torchrun --standalone --nproc_per_node=1 train_gpt.py > /tmp/$rid.out 2>&1
  echo "== $rid rc=$? wall=$(( $(date +%s) - t0 ))s env: $extra"
  grep -E "^(step:[0-9]+/[0-9]+ val_|stopping_early|peak memory|weight_average|Total submission size|roundtrip_without|final_.*roundtrip |sdpa_backend:)" /tmp/$rid.out | tail -12
  [ -n "${OUT:-}" ] && cp logs/$rid.txt "$OUT/" 2>/dev/null
  art=$(ls artifacts/${rid}_model.int*.ptz 2>/dev/null | head -1)
  [ -n "$art" ] || { tail -20 /tmp/$rid.out; continue; }
  t0=$(date +%s)
  env $extra COMPILE=0 EVAL_ARTIFACT=$art RUN_ID=${rid}_holdout DATA_PATH=$HOLD TOKENIZER_PATH=$TOK \
    torchrun --standalone --nproc_per_node=1 train_gpt.py > /tmp/${rid}_holdout.out 2>&1
  echo "== ${rid}_holdout rc=$? wall=$(( $(date +%s) - t0 ))s"
  grep -E "^(roundtrip_without|final_.*roundtrip )" /tmp/${rid}_holdout.out || tail -5 /tmp/${rid}_holdout.out
done
