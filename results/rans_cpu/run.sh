#!/bin/bash
# The rANS coder against lzma on trained weights, on the CPU: tools/requantize.py re-exports a run's raw weights
# at each export point with each compressor and prints its size; then the difference per point.
#   bash results/rans_cpu/run.sh artifacts/<RUN_ID>_model.pt
set -eu
RAW=${1:?usage: bash results/rans_cpu/run.sh RAW_WEIGHTS.pt}
OUT=$(mktemp -d)
for point in "6 12.85 8 14" "6 12.85 7 14" "7 6 8 14" "8 1 8 14"; do  # bits sigmas embed_bits embed_sigmas
  read -r b s eb es <<< "$point"
  for c in lzma rans; do
    QUANT_BITS=$b QUANT_CLIP_SIGMAS=$s EMBED_BITS=$eb EMBED_CLIP_SIGMAS=$es COMPRESSOR=$c COMPILE=0 \
      python3 tools/requantize.py "$RAW" "$OUT/q${b}s${s}e${eb}_$c.ptz" | tee "$OUT/$c.txt"
  done
  lzma=$(grep -o "model_bytes:[0-9]*" "$OUT/lzma.txt" | cut -d: -f2)
  rans=$(grep -o "model_bytes:[0-9]*" "$OUT/rans.txt" | cut -d: -f2)
  echo "== int$b ${s}sigma, embedding int$eb: rans - lzma = $((rans - lzma)) bytes" \
       "($(python3 -c "print(f'{$rans / $lzma - 1:+.2%}')"))"
done
rm -rf "$OUT"
