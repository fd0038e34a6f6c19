#!/bin/bash
# Downloads FlashAttention-4 (flash-attn-4 4.0.0b36, CuTe DSL) and what it needs beyond the GPU machine's
# packages (cp312, x86_64 Linux), and splits them into .bench/fa4a and .bench/fa4b: two carries of at most
# 64 MiB each (the CUDA 13 library wheel is 92 MB, so it travels in two halves). Run from the repository root.
set -eu
W=/tmp/fa4_wheels; mkdir -p $W .bench/fa4a .bench/fa4b
P="--python-version 3.12 --only-binary=:all: --no-deps -d $W"
for p in manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_28_x86_64; do P="$P --platform $p"; done
pip download $P flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
  nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 quack-kernels apache-tvm-ffi \
  torch-c-dlpack-ext einops
split -b 46000000 $W/nvidia_cutlass_dsl_libs_cu13-*.whl $W/cu13part.
cp $W/cu13part.aa $(ls $W/*.whl | grep -v libs_cu13) .bench/fa4a/
cp $W/cu13part.ab results/speed_attention_probe/probe.py .bench/fa4b/
du -sh .bench/fa4a .bench/fa4b
