#!/bin/bash
# Issue "Speed v2", after the stack became the default (session 14): does the compiler buy what is left?
# The step's "everything else" (76.6 of 290.9 ms at the seed configuration on cuDNN, notes/speed.md: fused Triton
# elementwise kernels and the gaps between launches) is what FlashAttention-4 left untouched. Two inductor settings
# aim at it without a line of train_gpt.py changing (both are read from the environment when torch imports):
#   TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1  tunes each fused Triton kernel's launch configuration;
#   TORCHINDUCTOR_CUDAGRAPHS=1                 replays the compiled forward and backward as CUDA graphs (no gaps).
# Each is benchmarked (tools/benchmark.py, FA4, 30 timed steps) against the plain compile at the seed's
# configuration and at today's defaults, then the defaults' step is profiled (top CUDA kernels, 3 steps).
# Needs FA4 unpacked in /tmp/fa4 (two carries: results/speed_attention_probe/README.md). Session 15 starts it after
# part 15 of results/v2_next/queue.sh (the defaults at P600v2 on cuDNN: a fixed 13 minutes, so first), in the
# command that stages the corpus's last part:
#   (setsid nohup bash -c 'bash results/v2_next/queue.sh 15; bash results/speed_v3/queue.sh;
#     touch /tmp/q/all_done' > /dev/null 2>&1 < /dev/null &)
# FA4 reaches the machine in the first two wait commands, while part 15 trains on cuDNN (carry .bench/fa4a:
#   mkdir -p /tmp/fa4w && cp .bench/fa4a/* /tmp/fa4w/ ; carry .bench/fa4b: R=$PWD; (cd /tmp/fa4w && cp $R/.bench/fa4b/* .
#   && cat cu13part.aa cu13part.ab > libs_cu13.whl && rm cu13part.* && mkdir -p /tmp/fa4 && for w in *.whl; do
#   python3 -m zipfile -e $w /tmp/fa4; done)),
# and each wait command also copies part 15's artifact to $OUT on its own (15.7 MB: too large to share the tarball's
# 16 MiB), for lossless-coding work on real int6 values on the CPU:
#   cp /tmp/repo/artifacts/def_p600_s1337_model.int6.ptz $OUT/ 2>/dev/null
# Writes /tmp/q/console.txt and one bench_<config>_<variant>.txt per run, then touches /tmp/q/done.
# Ran in session 15 (README.md here): plain and profile ran; CUDA graphs failed; the coordinate-descent runs were cut.
set -u; export PYTHONUNBUFFERED=1
Q=/tmp/q; mkdir -p $Q; rm -rf /tmp/repo_speed; cp -r . /tmp/repo_speed; cd /tmp/repo_speed  # part 15 keeps /tmp/repo
exec >> $Q/console.txt 2>&1
echo "== speed v3 queue start $(date -u +%T) $(nvidia-smi --query-gpu=name --format=csv,noheader) train_gpt.py sha256 $(sha256sum train_gpt.py | cut -c1-12)"
export PYTHONPATH=/tmp/fa4:/tmp/fa4/nvidia_cutlass_dsl/dsl_packages  # FA4 as pip's .pth would put it
python3 -c "import torch; print('torch', torch.__version__)"
SEED_STEP="VOCAB_SIZE=1024 MUON_WEIGHT_DECAY=0 MUON_ROW_NORM=0 NUM_LAYERS=9 MLP_MULT=2 XSA_LAYERS=0 ROPE_DIMS=0 LN_SCALE=0
  SMEAR_GATE=0 EMA_HORIZON_FRAC=0"  # the seed's model and optimizer
bench() {  # config variant [env...]
  local cfg=$1 name=$2; shift 2
  local extra; extra=$([ $cfg = seed ] && echo "$SEED_STEP")
  echo "== $cfg $name $*"
  env $extra "$@" SDPA_BACKEND=fa4 BENCH_STEPS=30 torchrun --standalone --nproc_per_node=1 tools/benchmark.py \
    > $Q/bench_${cfg}_$name.txt 2>&1; grep -E "^benchmark:" $Q/bench_${cfg}_$name.txt || tail -5 $Q/bench_${cfg}_$name.txt
}
# Cheapest first (coordinate descent tunes every kernel while compiling: the longest compile, so the last).
for cfg in seed defaults; do bench $cfg plain; bench $cfg cudagraphs TORCHINDUCTOR_CUDAGRAPHS=1 TORCH_LOGS=perf_hints; done  # says if it skips
bench defaults profile BENCH_PROFILE=/tmp/trace_defaults.json  # the table of top kernels lands in the file
for cfg in seed defaults; do bench $cfg coord TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1; done
echo "== queue done $(date -u +%T)"; touch $Q/done
