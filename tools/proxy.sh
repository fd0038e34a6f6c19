#!/bin/bash
# The benchmark proxy (../shared/BENCH.md, v2): train_gpt.py on one GPU for CAP seconds on the v2
# corpus, then score the artifact on the held-back documents. Usage, from the repository root on
# the GPU machine:
#   [VOCAB=8192] [CORPUS=/tmp/corpus] [HOLDOUT=1] [SWEEP="7:6 6:6 8:1"] \
#     bash tools/proxy.sh CAP NAME SEED "ENV ..." [NAME SEED "ENV ..." ...]
# CAP is MAX_WALLCLOCK_SECONDS: 180 for P180v2, 600 for P600v2. Each run is RUN_ID=NAME_pCAP_sSEED with
# VAL_LOSS_EVERY=0 and ENV on top (ENV may set VAL_LOSS_EVERY=250 for a curve).
# CORPUS holds the 15 files of tools/corpus_v2.sha256 (checked first: an incomplete copy is refused)
# and fineweb_${VOCAB}_bpe.model; notes/device.md says how it reaches our GPU machine. The shards
# are built once per machine: validation = the first 2,500 documents, held back = the last 2,500
# (never trained on; each artifact is rescored on them as its run scored, TTT included; HOLDOUT=0
# skips that), training = the rest. SWEEP re-exports each run's weights as BITS:CLIP_SIGMAS[:EMBED_BITS:
# EMBED_CLIP_SIGMAS[:COMPRESSOR]] (tools/requantize.py, rounding to nearest, by GPTQ with SWEEP_GPTQ=1 (Hessians
# from the training shards, the run's shapes); embedding 8:14 and rans unless given)
# and scores each export without sliding windows or TTT (8:any with an int8 embedding: size only; any point with a
# compressor: size only, since it scores as the same point without). Logs and a line per run go to $RESULTS
# (default $OUT).
set -u; export PYTHONUNBUFFERED=1
[ $# -ge 4 ] && [ $(( ($# - 1) % 3 )) = 0 ] && [[ $1 =~ ^[0-9]+$ ]] || {
  echo "error: usage: bash tools/proxy.sh CAP NAME SEED \"ENV\" [NAME SEED \"ENV\" ...] (CAP in seconds: 180 or 600)" >&2; exit 2; }
CAP=$1; shift
VOCAB=${VOCAB:-8192}; CORPUS=${CORPUS:-/tmp/corpus}; RES=${RESULTS:-${OUT:-/tmp/proxy_results}}
MANIFEST=$PWD/tools/corpus_v2.sha256; TOK=$CORPUS/fineweb_${VOCAB}_bpe.model
bad=$(cd "$CORPUS" 2>/dev/null && sha256sum -c "$MANIFEST" 2>/dev/null | grep -vc ': OK$')
[ "${bad:-15}" = 0 ] || {
  echo "error: $CORPUS lacks ${bad:-all} of the 15 corpus files of tools/corpus_v2.sha256 (missing or changed): stage the corpus again (notes/device.md)" >&2; exit 2; }
[ -f "$TOK" ] || { echo "error: no tokenizer $TOK: copy fineweb_${VOCAB}_bpe.model from ../shared/tokenizers into the corpus folder" >&2; exit 2; }
mkdir -p "$RES"
DATA=/tmp/proxy_v2_sp$VOCAB; HOLD=/tmp/proxy_v2_holdout_sp$VOCAB
if [ ! -f $DATA/manifest.json ]; then  # build.py writes the manifest last: its presence means a whole build
  t0=$(date +%s); rm -rf $DATA $HOLD
  python3 data/build.py --out $DATA --holdout-docs 2500 --holdout-out $HOLD --tokenizer $TOK --val-docs 2500 \
    --quiet $(awk -v c="$CORPUS" '{print c "/" $2}' "$MANIFEST") > $RES/build_sp$VOCAB.txt 2>&1 \
    || { cat $RES/build_sp$VOCAB.txt; exit 1; }
  echo "== build sp$VOCAB $(( $(date +%s) - t0 ))s"; tail -4 $RES/build_sp$VOCAB.txt
fi
common="VOCAB_SIZE=$VOCAB TOKENIZER_PATH=$TOK"; gptq=$([ "${SWEEP_GPTQ:-0}" = 1 ] && echo 1)
sweep_point() {  # B:S[:EB:ES[:C]] -> b c eb es comp, and q: the export's run id
  IFS=: read -r b c eb es comp <<< "$1"; q=${rid}_q${b}s${c}${eb:+e${eb}s${es}}${comp:+_$comp}${gptq:+_gptq}
  eb=${eb:-8}; es=${es:-14}; scored=$([ "$b$eb" != 88 ] && [ -z "$comp" ] && echo 1)
}
while [ $# -ge 3 ]; do
  name=$1; seed=$2; extra=$3; shift 3
  rid=${name}_p${CAP}_s${seed}
  t0=$(date +%s)
  env MAX_WALLCLOCK_SECONDS=$CAP VAL_LOSS_EVERY=0 $common $extra SEED=$seed RUN_ID=$rid DATA_PATH=$DATA \
    torchrun --standalone --nproc_per_node=1 train_gpt.py > /tmp/$rid.out 2>&1
  rc=$?; echo "== $rid P$CAP rc=$rc wall=$(( $(date +%s) - t0 ))s env: $common $extra"
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
    cp logs/${rid}_holdout.txt $RES/ 2>/dev/null
  fi
  [ -n "${SWEEP:-}" ] || continue
  t0=$(date +%s)
  for v in $SWEEP; do  # the points in parallel: each quantized and compressed (CPU), then scored (the GPU), its
    sweep_point $v     # lines printed as it ends, so that a queue cut short keeps the points that ended
    ( env $common $extra SDPA_BACKEND=flash QUANT_GPTQ=${gptq:-0} DATA_PATH=$DATA QUANT_BITS=$b QUANT_CLIP_SIGMAS=$c \
        EMBED_BITS=$eb EMBED_CLIP_SIGMAS=$es COMPRESSOR=${comp:-rans} python3 tools/requantize.py \
        artifacts/${rid}_model.pt artifacts/${q}_model.int$b.ptz > /tmp/$q.req 2>&1; cat /tmp/$q.req
      [ -n "$scored" ] && grep -q "^requantize:" /tmp/$q.req || exit 0
      env $common $extra COMPILE=0 EVAL_STRIDE=0 TTT_EPOCHS=0 EVAL_ARTIFACT=artifacts/${q}_model.int$b.ptz RUN_ID=$q \
        DATA_PATH=$DATA VAL_BATCH_SIZE=131072 python3 train_gpt.py > /tmp/$q.out 2>&1  # quarter batches: shared GPU
      echo "$q: $(grep -E '^final_.*roundtrip ' /tmp/$q.out || tail -2 /tmp/$q.out)" ) &
  done; wait
  echo "== ${rid} sweep wall=$(( $(date +%s) - t0 ))s"
done
