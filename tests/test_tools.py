"""tools/: the speed benchmark."""

from __future__ import annotations

import re
import subprocess
import sys

import torch

import train_gpt
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import benchmark  # noqa: E402


def test_flops_per_token_counts_every_matrix_and_causal_attention():
    args = train_gpt.Hyperparameters({})
    model = train_gpt.build_model(args, torch.device("cpu"))
    matrices = sum(p.numel() for n, p in model.blocks.named_parameters() if p.ndim == 2 and "resid_mix" not in n)
    matrices += model.tok_emb.weight.numel()  # the tied output layer
    attention = 6 * args.num_layers * args.train_seq_len * args.model_dim
    assert benchmark.flops_per_token(args) == 6 * matrices + attention == 215_482_368


def test_benchmark_runs_the_training_step_on_synthetic_tokens(tmp_path):
    env = dict(COMPILE="0", NUM_LAYERS="2", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", VOCAB_SIZE="512",
               TRAIN_SEQ_LEN="64", TRAIN_BATCH_TOKENS="1024", VAL_BATCH_SIZE="4096", WARMUP_STEPS="1",
               BENCH_STEPS="2", PATH="/usr/bin:/bin")
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    line = re.search(r"^benchmark: step_avg:([\d.]+)ms tokens_per_s:(\d+) model_tflops_per_s:([\d.]+) mfu:([\d.]+) "
                     r"step_min:[\d.]+ms step_max:[\d.]+ms steps:2 .* world_size:1 hardware:cpu", run.stdout, re.M)
    assert line, run.stdout
    step_ms, tokens_per_s = float(line[1]), int(line[2])
    assert abs(tokens_per_s - 1024 / (step_ms / 1000)) <= 1
    assert not (tmp_path / "logs").exists(), "the benchmark writes no run files"
