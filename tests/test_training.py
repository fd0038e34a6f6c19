"""The training side: the loader's data order, Newton-Schulz and Muon, and the loop (stopping, the weight
average) on an injected clock."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

import shards
import train_gpt
from conftest import SMALL_MODEL, cpu_run, leave_gloo


# ---- the loader -------------------------------------------------------------------------------

def write_numbered_shards(folder: Path, sizes: list[int]) -> list[Path]:
    """Shards whose tokens count up (mod 60000), so every token tells where it came from."""
    paths, start = [], 0
    for i, n in enumerate(sizes):
        path = folder / f"fineweb_train_{i:06d}.bin"
        shards.write_shard(path, (np.arange(start, start + n) % 60000).astype(np.uint16))
        paths.append(path)
        start += n
    return paths


def global_batches(files, world_size: int, steps: int, batch_tokens: int, seq_len: int) -> list[np.ndarray]:
    """The sequences of each optimizer step, in (micro-step, rank) order."""
    accum = 8 // world_size
    loaders = [train_gpt.DistributedTokenLoader(files, 65536, r, world_size, torch.device("cpu"))
               for r in range(world_size)]
    out = []
    for _ in range(steps):
        rows = []
        for _ in range(accum):
            for loader in loaders:
                x, y = loader.next_batch(batch_tokens, seq_len, accum)
                assert x.shape == y.shape == (batch_tokens // 8 // seq_len, seq_len)
                assert torch.equal(x[:, 1:], y[:, :-1])
                rows.append(torch.cat([x, y[:, -1:]], dim=1).numpy())
        out.append(np.concatenate(rows))
    return out


def test_loader_gives_the_same_global_batches_on_1_2_4_8_ranks(tmp_path):
    files = write_numbered_shards(tmp_path, [1000, 777, 1500])  # 3277 tokens; 6 steps wrap around twice
    reference = global_batches(files, 1, 6, batch_tokens=512, seq_len=16)
    for world_size in (2, 4, 8):
        for step, (a, b) in enumerate(zip(reference, global_batches(files, world_size, 6, 512, 16))):
            np.testing.assert_array_equal(a, b, err_msg=f"world_size={world_size} step={step}")
    # Each micro-step's chunk is contiguous in the stream: (L + 1) tokens per rank slice.
    first = reference[0].reshape(8, -1)
    np.testing.assert_array_equal(first[0][: 4], [0, 1, 2, 3])
    assert first[1][0] == 65 and first[0][-1] == 64  # the next slice starts one token after the +1 target


# ---- Newton-Schulz and Muon -------------------------------------------------------------------

def quintic(x: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        x = 3.4445 * x - 4.7750 * x ** 3 + 2.0315 * x ** 5
    return x


@pytest.mark.parametrize("shape", [(512, 512), (256, 512), (1024, 512), (512, 1024)])
def test_newton_schulz_singular_values_lie_in_the_quintic_band(shape):
    G = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    out = train_gpt.zeropower_via_newtonschulz5(G, steps=5)
    assert out.dtype == torch.bfloat16 and out.shape == G.shape
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    s_in = (S / G.double().norm()).numpy()
    s_out = torch.linalg.svdvals(out.double()).numpy()
    # Five steps map every normalized singular value above 0.002 into [0.6818, 1.2024].
    grid = np.linspace(0.002, 1, 100_000)
    low, high = quintic(grid, 5).min(), quintic(grid, 5).max()
    assert 0.68 < low < 0.69 and 1.20 < high < 1.21
    settled = np.sort(s_out)[::-1][s_in >= 0.002]
    assert settled.min() > low - 0.01 and s_out.max() < high + 0.01
    # Same singular vectors as G: the output is U f(S) V^T with f the quintic, up to bf16 rounding.
    expected = U @ torch.diag(torch.from_numpy(quintic(s_in, 5))) @ Vh
    assert torch.linalg.norm(out.double() - expected) / torch.linalg.norm(expected) < 0.03


def test_muon_step_is_nesterov_momentum_then_orthogonalized_update():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 32))
    start = w.detach().clone()
    muon = train_gpt.Muon([w], lr=0.1, momentum=0.9, backend_steps=5)
    grads = [torch.randn(64, 32) for _ in range(2)]
    buf = torch.zeros(64, 32)
    expected = start.clone()
    for g in grads:
        w.grad = g.clone()
        muon.step()
        buf = 0.9 * buf + g
        update = train_gpt.zeropower_via_newtonschulz5(g + 0.9 * buf, steps=5).float() * 2 ** 0.5  # rows/cols = 2
        expected -= 0.1 * update.bfloat16().float()
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-6)


def test_muon_weight_decay_is_decoupled_and_follows_the_scheduled_lr():
    torch.manual_seed(0)
    start, g = torch.randn(32, 32), torch.randn(32, 32)
    plain, decayed = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    m_plain = train_gpt.Muon([plain], lr=0.1, momentum=0.9, backend_steps=5)
    m_decay = train_gpt.Muon([decayed], lr=0.1, momentum=0.9, backend_steps=5, weight_decay=0.5)
    m_decay.param_groups[0]["lr"] = m_plain.param_groups[0]["lr"] = 0.05  # as the schedule sets it
    for p, opt in ((plain, m_plain), (decayed, m_decay)):
        p.grad = g.clone()
        opt.step()
    update = plain.detach() - start
    torch.testing.assert_close(decayed.detach(), start * (1 - 0.05 * 0.5) + update, rtol=0, atol=1e-6)


def test_muon_row_norm_gives_every_row_of_the_update_unit_norm_before_orthogonalizing():
    torch.manual_seed(0)
    start, g = torch.randn(64, 32), torch.randn(64, 32) * torch.linspace(0.01, 10, 64)[:, None]
    w = torch.nn.Parameter(start.clone())
    muon = train_gpt.Muon([w], lr=0.1, momentum=0.9, backend_steps=5, orthogonalize=lambda G, steps: G,
                          row_norm=True)
    w.grad = g.clone()
    muon.step()
    nesterov = 1.9 * g  # first step: buffer = g, update = g + 0.9 * buffer
    rows = nesterov / nesterov.norm(dim=-1, keepdim=True)
    expected = start - 0.1 * (rows * 2 ** 0.5).bfloat16().float()  # rows/cols = 2
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-6)
    # Off (the seed), the same step keeps the rows' 1000x spread in norm.
    plain = torch.nn.Parameter(start.clone())
    muon = train_gpt.Muon([plain], lr=0.1, momentum=0.9, backend_steps=5, orthogonalize=lambda G, steps: G)
    plain.grad = g.clone()
    muon.step()
    norms = (start - plain.detach()).norm(dim=-1)
    assert norms.max() / norms.min() > 500


MUON_SHAPES = [(64, 32), (32, 64), (64, 32), (48, 48), (32, 64), (48, 48), (64, 32)]


def muon_two_steps(rank: int, world_size: int, out_dir: str) -> None:
    """Two Muon steps on fixed weights and gradients, as one rank of world_size (gloo)."""
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=world_size)
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(s)) for s in MUON_SHAPES]
    muon = train_gpt.Muon(params, 0.05, 0.95, 5, rank, world_size, weight_decay=0.1, row_norm=True)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape)
        muon.step()
    torch.save([p.detach() for p in params], f"{out_dir}/rank{rank}.pt")
    if world_size > 1:
        leave_gloo()


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 3])
def test_muon_on_several_ranks_matches_one_rank(tmp_path, world_size):
    # 7 matrices in 3 shapes over 3 ranks: shares of 1 or 2, padded, and one rank with none of a shape.
    muon_two_steps(0, 1, str(tmp_path))
    alone = torch.load(tmp_path / "rank0.pt")
    torch.multiprocessing.spawn(muon_two_steps, args=(world_size, str(tmp_path)), nprocs=world_size)
    for rank in range(world_size):  # every rank holds every updated matrix
        for a, b in zip(alone, torch.load(tmp_path / f"rank{rank}.pt")):
            torch.testing.assert_close(b, a, rtol=0, atol=0.05 * 0.02 * 2)  # bf16 noise of a batched matmul


# ---- the weight average (EMA) -----------------------------------------------------------------

class RandomBatches:
    """Stands in for the training loader: random tokens, a stream of its own for each rank."""

    def __init__(self, vocab_size: int, rank: int = 0):
        self.vocab_size, self.generator = vocab_size, torch.Generator().manual_seed(rank)

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int):
        ids = torch.randint(0, self.vocab_size, (global_tokens // 8 // seq_len, seq_len + 1), generator=self.generator)
        return ids[:, :-1], ids[:, 1:]


TRAIN_ENV = dict(SMALL_MODEL, TRAIN_BATCH_TOKENS="256", TRAIN_SEQ_LEN="16", VAL_LOSS_EVERY="0", TRAIN_LOG_EVERY="0",
                 MAX_WALLCLOCK_SECONDS="0", COMPILE="0", MATRIX_LR="0.04", SCALAR_LR="0.04", TIED_EMBED_LR="0.1",
                 EMA_HORIZON_FRAC="0", QUANT_GPTQ="0")


def weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_and_record(monkeypatch, env: dict[str, str], rank: int = 0, world_size: int = 1, clock=None):
    """train() on a tiny model: the weights before and after every optimizer step, those the last
    validation saw and those left for GPTQ and the export."""
    run = cpu_run(rank, world_size, env)
    run.distributed = world_size > 1
    training = train_gpt.build_training(run)
    stepped, validated, optimizer_step = [weights_of(training.base_model)], [], train_gpt.optimizer_step

    def recording_step(*step_args):
        optimizer_step(*step_args)
        stepped.append(weights_of(training.base_model))

    def recording_eval(*_):
        validated.append(weights_of(training.base_model))
        return 0.0, 0.0

    monkeypatch.setattr(train_gpt, "optimizer_step", recording_step)
    monkeypatch.setattr(train_gpt, "eval_val", recording_eval)
    train_gpt.train(run, training, RandomBatches(64, rank), None, *([clock] if clock else []))
    return stepped, validated[-1], weights_of(training.base_model)


def test_the_loop_stops_at_the_cap_by_its_clock(monkeypatch):
    """The stop decision on an injected clock: every reading 50 ms later, two readings a step, a 1 s cap."""
    ticks, lines = itertools.count(), []
    run = cpu_run(env=dict(TRAIN_ENV, ITERATIONS="100000", MAX_WALLCLOCK_SECONDS="1", TRAIN_LOG_EVERY="4"))
    run.log = lambda msg, console=True: lines.append(msg)
    monkeypatch.setattr(train_gpt, "eval_val", lambda *_: (0.0, 0.0))
    training_ms = train_gpt.train(run, train_gpt.build_training(run), RandomBatches(64), None,
                                  lambda: next(ticks) * 0.05)
    assert training_ms == pytest.approx(1050.0)  # 20 readings in 10 steps reach 1 s; the last validation reads once more
    steps = [line.split()[0] for line in lines if " train_loss:" in line]
    assert steps == [f"step:{k}/100000" for k in range(1, 11)]  # steps up to 10 are always logged
    assert "step:1/100000 train_loss:" in lines[0] and lines[0].endswith("train_time:100ms step_avg:100.00ms")
    assert lines[-3:-1] == ["step:10/100000 val_loss:0.0000 val_bpb:0.0000 train_time:1050ms step_avg:105.00ms",
                            "stopping_early: wallclock_cap train_time:1050ms step:10/100000"]


def test_the_average_decays_by_the_budget_each_step_spends_and_is_what_the_export_sees(monkeypatch):
    fractions = [0.0, 0.02, 0.05, 0.051, 0.3, 0.31, 1.0]  # the budget spent after each of 6 steps: uneven steps
    monkeypatch.setattr(train_gpt, "budget_used", lambda step, *_: fractions[step])
    stepped, validated, final = train_and_record(monkeypatch, dict(TRAIN_ENV, ITERATIONS="6", EMA_HORIZON_FRAC="0.2"))
    assert len(stepped) == 7
    for name, value in validated.items():
        ema = stepped[0][name].double()
        for k in range(1, 7):
            keep = math.exp(-(fractions[k] - fractions[k - 1]) / 0.2)  # a step spending d of the budget keeps e^(-d/h)
            ema = keep * ema + (1 - keep) * stepped[k][name].double()
        torch.testing.assert_close(value, ema.to(value.dtype), msg=name)  # what the last validation saw
        assert torch.equal(final[name], value), "GPTQ and the export get the average too"
    moved = [n for n in validated if not torch.equal(stepped[-1][n], stepped[-2][n])]
    assert moved and not any(torch.allclose(validated[n], stepped[-1][n]) for n in moved)
    stepped, validated, final = train_and_record(monkeypatch, dict(TRAIN_ENV, ITERATIONS="6"))  # off (the seed)
    assert all(torch.equal(validated[n], stepped[-1][n]) and torch.equal(final[n], stepped[-1][n]) for n in final)
    # The records' 0.997 per step over ~5,000 steps is a horizon of 1/(1 - 0.997) = 333 steps, 0.067 of the run.
    assert math.exp(-(1 / 5000) / 0.0667) == pytest.approx(0.997, abs=1e-5)


def average_on_two_ranks(rank: int, world_size: int, out_dir: str) -> None:
    torch.set_num_threads(1)  # more threads than cores: gloo's DDP then takes seconds a step
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=world_size)
    # Schedules by steps, so that only the averaging could tell the ranks apart; clocks that disagree
    # (rank 1's runs 30% fast) would give each rank its own decays and its own stopping step.
    env = dict(TRAIN_ENV, ITERATIONS="100000", MAX_WALLCLOCK_SECONDS="1", EMA_HORIZON_FRAC="0.3", WARMDOWN_FRAC="0",
               WARMDOWN_ITERS="0", MUON_MOMENTUM_WARMUP_FRAC="0")
    ticks = itertools.count()
    with pytest.MonkeyPatch.context() as monkeypatch:
        stepped, _, final = train_and_record(monkeypatch, env, rank, world_size, lambda: next(ticks) * (0.02 + 0.006 * rank))
    torch.save(dict(last=stepped[-1], final=final, steps=len(stepped) - 1), f"{out_dir}/rank{rank}.pt")
    leave_gloo()


@pytest.mark.slow
def test_ranks_keep_the_same_average_under_a_wallclock_cap(tmp_path):
    """Every rank averages its own copy of the (identical) weights, by the budget fraction all ranks
    agreed on after each step, and all stop at the step the fastest clock says."""
    torch.multiprocessing.spawn(average_on_two_ranks, args=(2, str(tmp_path)), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2))
    assert a["steps"] == b["steps"] == 20  # rank 1's clock: 2 calls of 26 ms a step reach 1 s after 20 steps
    for name in a["final"]:
        assert torch.equal(a["last"][name], b["last"][name]) and torch.equal(a["final"][name], b["final"][name]), name
        assert not torch.equal(a["final"][name], a["last"][name]), f"{name} is the average, not the last step"
