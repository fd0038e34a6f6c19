#!/bin/bash
# The device queue of session 3 (2026-11-29), one H200: every figure in results/p180_v3 comes from
# it. It runs from a private copy of the repository (so later device calls, which re-send the
# working tree, cannot change it mid-queue) and writes console output and logs to /tmp/q.
# Started with: setsid nohup bash results/p180_v3/queue.sh > /dev/null 2>&1 &
set -u; export PYTHONUNBUFFERED=1
Q=/tmp/q; mkdir -p $Q; rm -rf /tmp/repo; cp -r . /tmp/repo; cd /tmp/repo
exec >> $Q/console.txt 2>&1
export RESULTS=$Q
echo "== queue start $(date -u +%T) $(git rev-parse --short HEAD 2>/dev/null) $(nvidia-smi --query-gpu=name --format=csv,noheader)"
python3 -c "import torch; print('torch', torch.__version__)"
# 1-2. Speed, synthetic tokens, seed configuration: the previous commit, then this tree.
(cd .bench/prev && torchrun --standalone --nproc_per_node=1 tools/benchmark.py 2>&1 | grep -E "^(benchmark|error)")
torchrun --standalone --nproc_per_node=1 tools/benchmark.py 2>&1 | grep -E "^(benchmark|error)"
# 3-5. P180 at vocab 4096, 8192 and 1024, each weight set re-exported at int7/int6 (lzma).
S="7:6 6:6 6:12.85 8:1"
SWEEP="$S" VOCAB=4096 bash tools/p180.sh v4096 1337 ""
SWEEP="$S" VOCAB=8192 bash tools/p180.sh v8192 1337 ""
SWEEP="$S" VOCAB=1024 bash tools/p180.sh base 1337 ""
# 6. The second seed of the better vocabulary (its final int8 roundtrip score), then of the base.
best=$(for v in 4096 8192; do
  b=$(grep -oP "^final_int8_zlib_roundtrip .*val_bpb:\K[0-9.]+" logs/v${v}_s1337.txt 2>/dev/null) && echo "$b $v"
done | sort -n | head -1 | cut -d' ' -f2)
echo "== better vocabulary: ${best:-none}"
[ -n "$best" ] && VOCAB=$best bash tools/p180.sh v$best 1338 ""
VOCAB=1024 bash tools/p180.sh base 1338 ""
echo "== queue done $(date -u +%T)"; touch $Q/done
