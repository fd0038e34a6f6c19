#!/bin/bash
# Issue "Speed v2" (ran in session 11: README.md here): every attention kernel in the real training step
# (tools/benchmark.py: step time, tokens/s, MFU) at the seed's configuration and at the defaults, then the first 100
# training losses of each kernel from one init and one data order on the v2 corpus (the same math: only bf16
# rounding may differ).
# Needs FA4 unpacked in /tmp/fa4 (two carries: results/speed_attention_probe/README.md) and, for the losses, the sp8192
# shards of tools/proxy.sh in /tmp/proxy_v2_sp8192 (any earlier proxy run of the session builds them). Start with:
#   setsid nohup bash results/speed_v2/queue.sh > /dev/null 2>&1 < /dev/null &
# BASE=dir (a checkout of main, where the branch forked) also benchmarks main's path (cuDNN, KV heads repeated).
# Last, the records' stack (11 layers, MLP 3x, XSA, ...: issue "Defaults for the record run") on cuDNN and FA4.
# Arguments pick parts (all when none): bench (seed and defaults, every kernel), losses (the first 100 losses of
# LOSS_KERNELS, default "flash fa4", each against the first), stack. "main"/"branch" in file names: BASE / this tree.
set -u; export PYTHONUNBUFFERED=1
PARTS="$*"; LOSS_KERNELS=${LOSS_KERNELS:-flash fa4}
Q=/tmp/q; mkdir -p $Q; rm -rf /tmp/repo; cp -r . /tmp/repo; cd /tmp/repo
exec >> $Q/console.txt 2>&1
echo "== speed queue start $(date -u +%T) $(nvidia-smi --query-gpu=name --format=csv,noheader) train_gpt.py sha256 $(sha256sum train_gpt.py | cut -c1-12)"
export PYTHONPATH=/tmp/fa4:/tmp/fa4/nvidia_cutlass_dsl/dsl_packages  # FA4 as pip's .pth would put it
python3 -c "import torch; print('torch', torch.__version__)"
SEED_STEP="VOCAB_SIZE=1024 MUON_WEIGHT_DECAY=0 MUON_ROW_NORM=0 NUM_LAYERS=9 MLP_MULT=2 XSA_LAYERS=0 ROPE_DIMS=0 LN_SCALE=0
  SMEAR_GATE=0 EMA_HORIZON_FRAC=0"  # the seed's model and optimizer
STACK="NUM_LAYERS=11 MLP_MULT=3 XSA_LAYERS=11 ROPE_DIMS=16 LN_SCALE=1 EMA_HORIZON_FRAC=0.067 SMEAR_GATE=1"
bench() {  # tree label config backend
  local extra; extra=$(case $3 in seed) echo "$SEED_STEP";; stack) echo "$STACK";; esac)
  echo "== $2 $3 SDPA_BACKEND=$4"
  (cd $1 && env $extra SDPA_BACKEND=$4 BENCH_STEPS=30 torchrun --standalone --nproc_per_node=1 tools/benchmark.py) \
    > $Q/bench_$2_$3_$4.txt 2>&1; grep -E "^benchmark:" $Q/bench_$2_$3_$4.txt || tail -5 $Q/bench_$2_$3_$4.txt
}
want() { [ -z "$PARTS" ] || [[ " $PARTS " == *" $1 "* ]]; }
if want bench; then
  for cfg in seed defaults; do
    [ -n "${BASE:-}" ] && bench $BASE main $cfg cudnn
    for backend in flash cudnn fa4; do bench . branch $cfg $backend; done
  done
  bench . branch defaults auto  # which kernel the probe picks, and that it costs nothing
fi
if want losses && [ ! -f /tmp/proxy_v2_sp8192/manifest.json ]; then
  echo "== losses skipped: no /tmp/proxy_v2_sp8192 shards"
elif want losses; then
  for backend in $LOSS_KERNELS; do
    env SDPA_BACKEND=$backend RUN_ID=loss100_$backend ITERATIONS=100 TRAIN_LOG_EVERY=1 VAL_LOSS_EVERY=0 \
      MAX_WALLCLOCK_SECONDS=0 TTT_EPOCHS=0 EVAL_STRIDE=0 DATA_PATH=/tmp/proxy_v2_sp8192 \
      TOKENIZER_PATH=/tmp/corpus/fineweb_8192_bpe.model torchrun --standalone --nproc_per_node=1 train_gpt.py \
      > /tmp/loss100_$backend.out 2>&1
    echo "== loss100_$backend rc=$? $(grep -E '^(sdpa_backend:|step:100/100 val)' /tmp/loss100_$backend.out | tr '\n' ' ')"
    cp logs/loss100_$backend.txt $Q/ || echo "== loss100_$backend left no log"
  done
  LOSS_KERNELS="$LOSS_KERNELS" python3 - <<'PY'
import os, re
kernels = os.environ["LOSS_KERNELS"].split()
losses = {b: [float(m[1]) for m in re.finditer(r"^step:\d+/100 train_loss:([\d.]+) ", open(f"/tmp/q/loss100_{b}.txt").read(), re.M)]
          for b in kernels if os.path.exists(f"/tmp/q/loss100_{b}.txt")}
for b in [b for b in kernels[1:] if losses.get(b) and losses.get(kernels[0])]:
    d = [abs(x - y) for x, y in zip(losses[b], losses[kernels[0]])]
    print(f"{b} against {kernels[0]}: {len(d)} steps, max |train_loss difference| {max(d):.4f}, at step 100 {d[-1]:.4f}")
PY
fi
want stack && { bench . branch stack cudnn; bench . branch stack fa4; }
echo "== queue done $(date -u +%T)"; touch $Q/done
