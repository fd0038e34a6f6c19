"""Training speed of train_gpt.py's current configuration, on synthetic tokens (no data needed).

    torchrun --standalone --nproc_per_node=1 tools/benchmark.py
    SDPA_BACKEND=flash BENCH_STEPS=30 torchrun --standalone --nproc_per_node=2 tools/benchmark.py
    BENCH_PROFILE=trace.json torchrun --standalone --nproc_per_node=1 tools/benchmark.py

Every environment variable of train_gpt.py applies (shape, batch, SDPA_BACKEND, COMPILE, ...). It
builds the model and optimizers with train_gpt.py's own functions, runs WARMUP_STEPS untimed steps
(compilation), then BENCH_STEPS timed steps of the real training step (forward, backward, DDP,
Muon, Adam) on random tokens (with RECUR_LAYERS, the looped step), and prints one line:

    benchmark: step_avg:391.20ms tokens_per_s:1005123 model_tflops_per_s:216.4 mfu:0.274 ...

MFU counts the matmul FLOPs of the model (6 x matrix parameters per token, the tied head included)
plus causal attention (6 x seq_len x model_dim per token per layer, forward and backward), over
BENCH_PEAK_TFLOPS per GPU (default 790: the bf16 matrix rate measured on an H200 of this
workplace). BENCH_PROFILE=path also writes a torch profiler trace of 3 steps and prints the CUDA
kernels that take the most time.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402


class SyntheticLoader:
    """Stands in for DistributedTokenLoader: uniform random tokens of the right shapes."""

    def __init__(self, vocab_size: int, rank: int, world_size: int, device: torch.device):
        self.vocab_size, self.world_size, self.device = vocab_size, world_size, device
        self.generator = torch.Generator(device=device).manual_seed(1234 + rank)

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int):
        rows = global_tokens // (self.world_size * grad_accum_steps) // seq_len
        tokens = torch.randint(0, self.vocab_size, (rows, seq_len + 1), device=self.device, generator=self.generator)
        return tokens[:, :-1], tokens[:, 1:]


def flops_per_token(args: tg.Hyperparameters) -> float:
    d, hidden, kv = args.model_dim, args.mlp_mult * args.model_dim, args.num_kv_heads * (args.model_dim // args.num_heads)
    block_matrices = d * d * 2 + d * kv * 2 + d * hidden * 2  # q, proj; k, v; fc, proj
    blocks_run = args.num_layers + args.recur_layers  # a looped block computes twice
    matrix_params = blocks_run * block_matrices + args.vocab_size * d  # + the output layer
    attention = 6 * args.train_seq_len * d * blocks_run  # QK^T and AV, causal half, fwd + bwd
    return 6 * matrix_params + attention


def main() -> None:
    args = tg.Hyperparameters()
    steps = int(os.environ.get("BENCH_STEPS", "20"))
    peak_tflops = float(os.environ.get("BENCH_PEAK_TFLOPS", "790"))
    profile_path = os.environ.get("BENCH_PROFILE", "")
    run = tg.setup_run(args, os.environ)
    training = tg.build_training(run)
    training.base_model.looped = args.recur_layers > 0  # the heavier step, after the recurrence switches on
    loader = SyntheticLoader(args.vocab_size, run.rank, run.world_size, run.device)

    def step() -> None:
        tg.forward_backward(run, training.model, loader)
        tg.optimizer_step(run, training, 1.0)

    t0 = time.perf_counter()
    for _ in range(max(args.warmup_steps, 1)):
        step()
    run.sync()
    warmup_s = time.perf_counter() - t0
    times_ms = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        run.sync()
        times_ms.append(1000 * (time.perf_counter() - t0))
    if profile_path:
        with torch.profiler.profile() as prof:
            for _ in range(3):
                step()
            run.sync()
    if run.rank == 0:
        step_ms = statistics.median(times_ms)
        tokens_per_s = args.train_batch_tokens / (step_ms / 1000)
        model_tflops = flops_per_token(args) * tokens_per_s / 1e12
        name = torch.cuda.get_device_name(run.device).replace(" ", "_") if run.device.type == "cuda" else "cpu"
        print(f"benchmark: step_avg:{step_ms:.2f}ms tokens_per_s:{tokens_per_s:.0f} "
              f"model_tflops_per_s:{model_tflops:.1f} mfu:{model_tflops / (peak_tflops * run.world_size):.3f} "
              f"step_min:{min(times_ms):.2f}ms step_max:{max(times_ms):.2f}ms steps:{steps} "
              f"warmup_s:{warmup_s:.1f} world_size:{run.world_size} hardware:{name} sdpa_backend:{args.sdpa_backend} "
              f"peak_alloc_mib:{torch.cuda.max_memory_allocated() // 2**20 if run.device.type == 'cuda' else 0}",
              flush=True)
        if profile_path:
            prof.export_chrome_trace(profile_path)
            sort_key = "self_cuda_time_total" if run.device.type == "cuda" else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=sort_key, row_limit=25, max_name_column_width=60))
    if run.distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except tg.ConfigError as e:
        tg.exit_with(e)
