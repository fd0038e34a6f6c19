"""The pure parts of train_gpt.py: hyperparameters, the loader's data order, Newton-Schulz and
Muon, the schedules, quantization and the model's parameter routing."""

from __future__ import annotations

import io
import itertools
import math
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import shards
import train_gpt
from conftest import cpu_run, readme_block

def quantize(state, bits=8, clip_sigmas=6.0, hessians=None, damp=0.01):
    return train_gpt.quantize_state_dict(state, bits, clip_sigmas, hessians, damp)


# The seed recipe's defaults, written out from SPEC.md ("Hyperparameters").
SPEC_DEFAULTS = dict(
    data_path="./data/datasets/fineweb10B_sp1024", tokenizer_path="./data/tokenizers/fineweb_1024_bpe.model",
    seed=1337, val_batch_size=524288, val_loss_every=1000, train_log_every=200, iterations=20000,
    warmdown_iters=3000, warmup_steps=20, train_batch_tokens=393216, train_seq_len=4096, max_wallclock_seconds=600,
    qk_gain_init=1.5, vocab_size=1024, num_layers=9, num_kv_heads=4, model_dim=512, num_heads=8, mlp_mult=2,
    tie_embeddings=True, rope_base=10000, logit_softcap=30, embed_lr=0.6, head_lr=0.008, tied_embed_lr=0.030,
    tied_embed_init_std=0.005, matrix_lr=0.020, scalar_lr=0.020, muon_momentum=0.99, muon_backend_steps=5,
    muon_momentum_warmup_start=0.92, muon_momentum_warmup_steps=1500, beta1=0.9, beta2=0.95, adam_eps=1e-8,
    grad_clip_norm=0.0)

# The switches of everything beyond the seed, at the values that give the seed's math.
SEED_SWITCHES = dict(sdpa_backend="flash", warmdown_frac=0.0, muon_momentum_warmup_frac=0.0, eval_stride=0,
                     mlp_leaky_slope=0.0, parallel_layers=0, recur_layers=0, muon_weight_decay=0.0, muon_row_norm=False,
                     rope_dims=0, ln_scale=False, xsa_layers=0, smear_gate=False, ema_horizon_frac=0.0,
                     quant_bits=8, compressor="zlib", quant_gptq=False, ttt_epochs=0)
# Settings that do not change what is computed (or only matter when a switch above is on).
NOT_MATH = {"run_id", "eval_artifact", "compile", "recur_start", "recur_from_frac", "quant_clip_sigmas",
            "gptq_calib_batches", "gptq_damp", "gptq_reserve_seconds", "ttt_lr", "ttt_chunk_tokens"}


# ---- hyperparameters --------------------------------------------------------------------------

def test_every_setting_is_either_seed_math_or_not_math():
    """A new variable must say what value gives the seed back; the README test below then checks it."""
    defaults = train_gpt.Hyperparameters.defaults()
    assert set(defaults) == set(SPEC_DEFAULTS) | set(SEED_SWITCHES) | NOT_MATH
    for name, value in {**SPEC_DEFAULTS, **SEED_SWITCHES}.items():
        assert isinstance(value, type(defaults[name])) or type(defaults[name]) is float, name
    line = train_gpt.Hyperparameters({}).as_line()
    assert line.startswith("hyperparameters: ") and "\n" not in line
    assert all(f" {name}=" in line for name in train_gpt.Hyperparameters.defaults())


def test_readme_seed_environment_selects_the_seed_math():
    line = readme_block("seed-environment")
    env = dict(word.split("=", 1) for word in line.split() if "=" in word and word[0].isupper())
    args = train_gpt.Hyperparameters(env)
    for name, value in {**SPEC_DEFAULTS, **SEED_SWITCHES}.items():
        assert getattr(args, name) == value, name
    model = train_gpt.build_model(args, torch.device("cpu"))
    assert not any(block.attn.expand_kv or block.parallel or block.attn.xsa for block in model.blocks)
    assert all(block.norm_scale == 1.0 for block in model.blocks)
    assert model.blocks[0].mlp.leaky_slope == 0 and model.rope_dims == 64 and model.smear_gate is None


def test_environment_overrides_and_types():
    args = train_gpt.Hyperparameters(dict(SEED="7", MATRIX_LR="0.05", TIE_EMBEDDINGS="0", COMPILE="false",
                                          RUN_ID="x1", MAX_WALLCLOCK_SECONDS="180"))
    assert (args.seed, args.matrix_lr, args.tie_embeddings, args.compile, args.run_id) == (7, 0.05, False, False, "x1")
    assert args.max_wallclock_seconds == 180.0 and isinstance(args.max_wallclock_seconds, float)


@pytest.mark.parametrize("var, raw, expected", [("SEED", "abc", "an integer"), ("ITERATIONS", "1.5", "an integer"),
                                                ("MATRIX_LR", "fast", "a number"), ("TIE_EMBEDDINGS", "2", "0 or 1")])
def test_bad_numbers_name_the_variable(var, raw, expected):
    with pytest.raises(train_gpt.ConfigError) as e:
        train_gpt.Hyperparameters({var: raw})
    assert str(e.value).startswith(f"{var}={raw!r} is not {expected}") and "\n" not in str(e.value)


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


# ---- schedules --------------------------------------------------------------------------------

@pytest.mark.parametrize("step, expected", [(0, 1.0), (79, 1.0), (80, 1.0), (90, 0.5), (99, 0.05), (100, 0.0)])
def test_lr_multiplier_without_cap_decays_over_the_last_iterations(step, expected):
    assert train_gpt.lr_multiplier(step, 0.0, 100, 20, None, 0.0) == pytest.approx(expected)


@pytest.mark.parametrize("step, elapsed_ms, expected", [
    (50, 5000.0, 1.0),            # 100 ms/step: the warmdown is the last 1000 ms; 5000 ms remain
    (90, 9000.0, 1.0),            # exactly at its start
    (95, 9500.0, 0.5),            # half of it remains
    (100, 9750.0, 250 / 975),     # 97.5 ms/step: a 975 ms warmdown with 250 ms left
    (100, 10000.0, 0.0),          # at the cap
    (101, 10100.0, 0.0),          # past the cap
])
def test_lr_multiplier_under_a_wallclock_cap(step, elapsed_ms, expected):
    assert train_gpt.lr_multiplier(step, elapsed_ms, 20000, 10, 10_000.0, 0.0) == pytest.approx(expected)


def test_loop_budget_leaves_gptq_its_reserve_and_the_warmdown_ends_there():
    args = train_gpt.Hyperparameters(dict(MAX_WALLCLOCK_SECONDS="30", QUANT_GPTQ="1", GPTQ_RESERVE_SECONDS="27"))
    budget = train_gpt.loop_budget_ms(args)
    assert budget == 3000.0
    assert train_gpt.lr_multiplier(30, 3000.0, 20000, 0, budget, warmdown_frac=1.0) == 0.0
    assert train_gpt.lr_multiplier(15, 1500.0, 20000, 0, budget, warmdown_frac=1.0) == pytest.approx(0.5)
    assert train_gpt.loop_budget_ms(train_gpt.Hyperparameters(dict(MAX_WALLCLOCK_SECONDS="30"))) == 30_000.0
    assert train_gpt.loop_budget_ms(train_gpt.Hyperparameters(dict(MAX_WALLCLOCK_SECONDS="0", QUANT_GPTQ="1"))) is None


def test_lr_multiplier_without_warmdown_is_flat():
    assert train_gpt.lr_multiplier(99, 9990.0, 100, 0, 10_000.0, 0.0) == 1.0


@pytest.mark.parametrize("step, expected", [(0, 0.92), (750, 0.955), (1500, 0.99), (5000, 0.99)])
def test_muon_momentum_warmup_in_steps(step, expected):
    by_steps = train_gpt.Hyperparameters(dict(MUON_MOMENTUM_WARMUP_FRAC="0"))  # over the seed's 1500 steps
    assert train_gpt.muon_momentum(step, 0.0, by_steps) == pytest.approx(expected)
    no_warmup = train_gpt.Hyperparameters(dict(MUON_MOMENTUM_WARMUP_FRAC="0", MUON_MOMENTUM_WARMUP_STEPS="0"))
    assert train_gpt.muon_momentum(step, 0.0, no_warmup) == 0.99


@pytest.mark.parametrize("elapsed_ms, lr, momentum", [
    (0.0, 1.0, 0.92), (9_000.0, 1.0, 0.955), (18_000.0, 1.0, 0.99), (115_000.0, 1.0, 0.99),
    (120_000.0, 1.0, 0.99),  # the warmdown starts at 1 - 1/3 of the 180 s budget
    (150_000.0, 0.5, 0.99), (180_000.0, 0.0, 0.99), (190_000.0, 0.0, 0.99)])
def test_budget_fractions_follow_the_clock_not_the_step_count(elapsed_ms, lr, momentum):
    for step in (1, 460, 5000):  # the same shape however many steps fit in the budget (ITERATIONS never end it)
        used = train_gpt.budget_used(step, elapsed_ms, 10**12, 180_000.0)
        assert train_gpt.lr_multiplier(step, elapsed_ms, 10**12, 3000, 180_000.0, warmdown_frac=1 / 3) == \
            pytest.approx(lr)
        by_budget = train_gpt.Hyperparameters(dict(MUON_MOMENTUM_WARMUP_FRAC="0.1"))
        assert train_gpt.muon_momentum(step, used, by_budget) == pytest.approx(momentum)


def test_budget_fractions_count_iterations_without_a_cap_or_when_they_end_the_run_first():
    assert train_gpt.budget_used(250, 1e9, 1000, None) == 0.25
    assert train_gpt.lr_multiplier(900, 0.0, 1000, 0, None, warmdown_frac=0.2) == pytest.approx(0.5)
    # Under a cap that ITERATIONS=1000 reach first (at 10 s of 180), the warmdown still ends at 0 by step 1000.
    assert train_gpt.budget_used(250, 2_500.0, 1000, 180_000.0) == 0.25
    assert train_gpt.lr_multiplier(900, 9_000.0, 1000, 0, 180_000.0, warmdown_frac=0.2) == pytest.approx(0.5)
    assert train_gpt.lr_multiplier(1000, 10_000.0, 1000, 0, 180_000.0, warmdown_frac=0.2) == 0.0


# ---- quantization -----------------------------------------------------------------------------

def test_quantize_round_trip_exactness_error_bound_and_sizes():
    torch.manual_seed(0)
    w = torch.randn(300, 400) * 0.05
    w[3, 7] = 40.0  # an outlier: at 400 values a row's 99.99984th percentile is nearly its maximum
    state = {
        "big": w, "big_bf16": (torch.randn(256, 300) * 0.3).bfloat16(),
        "vector_big": torch.randn(70_000) * 2.0,
        "small": torch.randn(64, 64), "small_bf16": torch.randn(100).bfloat16(),
        "blocks.0.attn_scale": torch.randn(512), "blocks.0.resid_mix": torch.randn(2, 512),
        "step_count": torch.tensor([3, 4], dtype=torch.int64),
    }
    obj, stats = quantize(state)
    blob, torch_bytes = train_gpt.serialize_artifact(obj, "zlib")
    back = train_gpt.dequantize_state_dict(torch.load(io.BytesIO(zlib.decompress(blob))))
    assert set(back) == set(state) and all(back[k].dtype == state[k].dtype for k in state)
    # kept tensors: control tensors and integers bit-exact, the rest through fp16 exactly
    for name in ("blocks.0.attn_scale", "blocks.0.resid_mix", "step_count", "small_bf16"):
        assert torch.equal(back[name], state[name]), name
    assert torch.equal(back["small"], state["small"].half().float())
    # int8 rows: within half a step of the clipped weight, plus the fp16 rounding of the scale and,
    # for a bf16 tensor, the final cast back to bf16
    for name in ("big", "big_bf16"):
        t = state[name].float()
        clip = torch.quantile(t.abs(), 99.99984 / 100, dim=1)
        scale32 = (clip / 127).clamp_min(1 / 127)
        scale16 = obj["scales"][name].float()
        assert obj["quantized"][name].dtype == torch.int8 and obj["scales"][name].shape == (t.shape[0],)
        bound = (scale32 / 2 + 127 * (scale16 - scale32).abs() + 1e-7)[:, None]
        if state[name].dtype == torch.bfloat16:
            bound = bound + back[name].float().abs() * 2 ** -8
        err = (back[name].float() - torch.clamp(t, -clip[:, None], clip[:, None])).abs()
        assert (err <= bound).all(), name
    assert abs(back["big"][3, 7] - 40.0) < 0.2 and obj["scales"]["big"][0] == torch.tensor(1 / 127).half()
    err = (back["vector_big"] - state["vector_big"]).abs().max()
    assert err <= float(obj["scales"]["vector_big"]) / 2 + 1e-6 and obj["scales"]["vector_big"].ndim == 0
    expected_payload = (300 * 400 + 2 * 300) + (256 * 300 + 2 * 256) + (70_000 + 4) + 64 * 64 * 2 + 100 * 2 \
        + 512 * 4 + 1024 * 4 + 16
    assert stats["payload_bytes"] == expected_payload
    assert stats["tensor_bytes"] == sum(t.numel() * t.element_size() for t in state.values())
    assert torch_bytes > stats["payload_bytes"] and len(blob) < torch_bytes


def test_model_round_trips_through_an_artifact_file(tmp_path):
    env = dict(VOCAB_SIZE="512", NUM_LAYERS="3", MODEL_DIM="160", NUM_HEADS="4", NUM_KV_HEADS="2")
    model = train_gpt.build_model(train_gpt.Hyperparameters(env), torch.device("cpu"))
    path = tmp_path / "m.int8.ptz"
    path.write_bytes(train_gpt.serialize_artifact(quantize(model.state_dict())[0], "zlib")[0])
    fresh = train_gpt.build_model(train_gpt.Hyperparameters(dict(env, SEED="2")), torch.device("cpu"))
    train_gpt.load_weights(fresh, train_gpt.load_artifact(str(path))[0], str(path))
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert a.dtype == b.dtype and (a.float() - b.float()).abs().max() <= 1 / 127, name
    wider = train_gpt.build_model(train_gpt.Hyperparameters(dict(env, MLP_MULT="3")), torch.device("cpu"))
    with pytest.raises(train_gpt.ConfigError, match="has shape"):
        train_gpt.load_weights(wider, train_gpt.load_artifact(str(path))[0], str(path))


def export_state() -> dict[str, torch.Tensor]:
    """A small state with one tensor of each export path: the tied embedding, block matrices
    (fp32 and bf16), a matrix small enough to stay fp16, a control tensor and a big vector."""
    torch.manual_seed(0)
    return {"tok_emb.weight": torch.randn(512, 160) * 0.02, "blocks.0.mlp.fc.weight": torch.randn(480, 160) * 0.05,
            "blocks.0.mlp.proj.weight": (torch.randn(160, 480) * 0.05).bfloat16(),
            "blocks.0.attn.c_q.weight": torch.randn(160, 160), "blocks.0.attn_scale": torch.randn(160),
            "vector_big": torch.randn(70_000)}


def published_int8_export(state: dict[str, torch.Tensor]) -> dict:
    """SPEC.md's export ("Export and the roundtrip"), as the published script writes its dict."""
    obj = dict(__quant_format__="int8_clean_per_row_v1", quantized={}, scales={}, dtypes={}, passthrough={},
               qmeta={}, passthrough_orig_dtypes={})
    for name, t in state.items():
        if t.numel() <= 65_536:  # kept: control tensors as float32, others as float16
            control = any(p in name for p in ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight"))
            if not control:
                obj["passthrough_orig_dtypes"][name] = str(t.dtype).removeprefix("torch.")
            obj["passthrough"][name] = t.float() if control else t.half()
            continue
        w, q_max = t.float(), 127
        if w.ndim == 2:  # per row: clip at the 99.99984th percentile of |w|, scale clip/127, at least 1/127
            clip = torch.quantile(w.abs(), 0.9999984, dim=1)
            scale = (clip / q_max).clamp_min(1 / q_max)
            q = torch.round(torch.maximum(torch.minimum(w, clip[:, None]), -clip[:, None]) / scale[:, None])
            obj["scales"][name], obj["qmeta"][name] = scale.half(), dict(scheme="per_row", axis=0)
        else:  # one scale for the tensor
            clip = float(torch.quantile(w.abs().flatten(), 0.9999984))
            scale = torch.tensor(clip / q_max if clip > 0 else 1.0)
            q = torch.round(w.clamp(-clip, clip) / scale)
            obj["scales"][name] = scale
        obj["quantized"][name] = q.clamp(-q_max, q_max).to(torch.int8)
        obj["dtypes"][name] = str(t.dtype).removeprefix("torch.")
    return obj


def test_seed_export_is_the_published_scripts_tensor_by_tensor(tmp_path):
    """QUANT_BITS=8 with zlib writes the published script's dict, every tensor equal in dtype and value,
    and the artifact is that dict through torch.save and zlib level 9."""
    state = export_state()
    obj = quantize(state, bits=8, clip_sigmas=1.0)[0]  # sigmas: only below 8 bits
    want = published_int8_export(state)
    assert obj.keys() == want.keys()
    for part in ("quantized", "scales", "passthrough"):
        assert obj[part].keys() == want[part].keys(), part
        for name, t in want[part].items():
            assert obj[part][name].dtype == t.dtype and torch.equal(obj[part][name], t), (part, name)
    for part in ("dtypes", "qmeta", "passthrough_orig_dtypes", "__quant_format__"):
        assert obj[part] == want[part], part
    blob = train_gpt.serialize_artifact(obj, "zlib")[0]
    buf = io.BytesIO()
    torch.save(obj, buf)
    assert zlib.decompress(blob) == buf.getvalue() and blob == zlib.compress(buf.getvalue(), 9)
    (tmp_path / "seed.int8.ptz").write_bytes(blob)
    assert train_gpt.load_artifact(str(tmp_path / "seed.int8.ptz"))[1:] == (8, "zlib")


@pytest.mark.parametrize("bits, sigmas", [(6, 12.85), (5, 2.0), (7, 3.0)])
def test_intn_rows_clip_at_sigmas_and_round_within_half_a_step(bits, sigmas):
    state, levels = export_state(), 2 ** (bits - 1) - 1
    state["blocks.0.mlp.fc.weight"][5] = 0.0
    obj = quantize(state, bits=bits, clip_sigmas=sigmas)[0]
    back = train_gpt.dequantize_state_dict(obj)
    for name in ("blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight"):
        t, q, scale16 = state[name].float(), obj["quantized"][name], obj["scales"][name].float()
        assert obj["qmeta"][name] == dict(scheme="per_row", axis=0, bits=bits) and q.dtype == torch.int8
        assert q.abs().max() <= levels and back[name].dtype == state[name].dtype
        clip = sigmas * torch.from_numpy(t.double().numpy().std(axis=1)).float()  # population std
        scale32 = clip / levels
        rows = clip > 0
        assert torch.allclose(scale16[rows], scale32[rows], rtol=1e-3)  # an unbiased std would be 0.3% off
        clipped = torch.maximum(torch.minimum(t, clip[:, None]), -clip[:, None])
        bound = (scale16 / 2 + levels * (scale16 - scale32).abs() + 1e-7)[:, None]
        if state[name].dtype == torch.bfloat16:
            bound = bound + back[name].float().abs() * 2 ** -8
        assert ((back[name].float() - clipped).abs() <= bound)[rows].all(), name
        assert (q[rows][t[rows].abs() >= clip[rows, None]].abs() == levels).all(), "beyond the clip: the last level"
        if sigmas < 3.5:
            assert (q.abs() == levels).any(), "a clip inside the rows' range uses the outer levels"
    fc = "blocks.0.mlp.fc.weight"
    assert obj["scales"][fc][5] > 0 and not obj["quantized"][fc][5].any() and not back[fc][5].any(), "zero row"
    # A row so small that its fp16 scale (1.4 subnormal steps) rounds down to one step keeps to the levels.
    tiny = 1.4 * 2 ** -24 * levels
    q, scale = train_gpt.quantize_rows_nearest(torch.tensor([[tiny, -tiny] * 4]), bits, clip_sigmas=1.0)
    assert scale.item() == 2 ** -24 and q.abs().max() == levels
    # The tied embedding keeps the seed's int8 quantile path; the rest is exported as at 8 bits.
    q8, scale8 = train_gpt.quantize_tensor(state["tok_emb.weight"])
    assert torch.equal(obj["quantized"]["tok_emb.weight"], q8) and torch.equal(obj["scales"]["tok_emb.weight"], scale8)
    assert obj["qmeta"]["tok_emb.weight"] == dict(scheme="per_row", axis=0)
    seed = quantize(state)[0]
    assert torch.equal(obj["quantized"]["vector_big"], seed["quantized"]["vector_big"])
    assert obj["passthrough"].keys() == seed["passthrough"].keys() == {"blocks.0.attn.c_q.weight",
                                                                       "blocks.0.attn_scale"}


def dequantized(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


@pytest.mark.parametrize("bits", [5, 6, 7])
def test_gptq_keeps_the_layer_output_closer_than_rounding_to_nearest(bits):
    """Correlated inputs, as a layer sees them: GPTQ on the same grid (the same fp16 scales and
    levels, so the same format) gives a smaller output error X (W - Wq)^T."""
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(4096, 192, generator=gen) @ torch.randn(192, 192, generator=gen)
    x = x * torch.rand(192, generator=gen) * 3  # inputs of unequal energy, as after a norm's gains
    w = torch.randn(160, 192, generator=gen) * 0.05
    q_rtn, s_rtn = train_gpt.quantize_rows_nearest(w, bits, 6.0)
    q, scale = train_gpt.quantize_rows_gptq(w, x.T @ x, bits, 6.0, damp=0.01)
    assert torch.equal(scale, s_rtn) and q.dtype == torch.int8 and q.shape == w.shape
    assert q.abs().max() <= 2 ** (bits - 1) - 1
    err_rtn = torch.linalg.norm(x @ (w - dequantized(q_rtn, s_rtn)).T)
    err = torch.linalg.norm(x @ (w - dequantized(q, scale)).T)
    assert err < 0.7 * err_rtn, (err, err_rtn)
    assert not torch.equal(q, q_rtn) and (q.float() - q_rtn.float()).abs().mean() < 1, "a nearby grid point"


def test_gptq_without_input_correlation_is_rounding_to_nearest():
    """A diagonal H (uncorrelated inputs; damping keeps it diagonal) gives no error anything to move
    onto: exactly round-to-nearest, whatever the inputs' energies, even with no input ever nonzero
    (H = 0, which damping alone cannot make invertible)."""
    torch.manual_seed(0)
    w = torch.randn(96, 300) * 0.05
    w[:, 7] = 1.0  # beyond the clip: the outer level, as round-to-nearest
    q_rtn, s_rtn = train_gpt.quantize_rows_nearest(w, 6, 6.0)
    energies = torch.rand(300)
    energies[11] = 0.0
    for hessian in (torch.eye(300), torch.diag(energies), torch.zeros(300, 300)):
        q, scale = train_gpt.quantize_rows_gptq(w, hessian, 6, 6.0, damp=0.01)
        assert torch.equal(q, q_rtn) and torch.equal(scale, s_rtn)


def test_gptq_column_order_follows_the_inputs_and_is_undone():
    """Act-order: columns go by falling diag H, so permuting the inputs (columns of W, rows and
    columns of H) permutes the result and nothing else."""
    torch.manual_seed(1)
    x = torch.randn(2048, 160) @ torch.randn(160, 160) * torch.rand(160)
    w = torch.randn(64, 160) * 0.05
    perm = torch.randperm(160)
    q = train_gpt.quantize_rows_gptq(w, x.T @ x, 6, 6.0, 0.01)[0]
    q_perm = train_gpt.quantize_rows_gptq(w[:, perm], (x.T @ x)[perm][:, perm], 6, 6.0, 0.01)[0]
    assert torch.equal(q[:, perm], q_perm)


def test_export_rounds_by_gptq_only_the_intn_matrices_with_a_hessian():
    state = export_state()
    fc, proj = "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight"
    x = torch.randn(1024, 160) @ torch.randn(160, 160)
    hessians = {fc: x.T @ x, "tok_emb.weight": x.T @ x}  # the tied embedding stays int8 regardless
    plain = quantize(state, bits=6, clip_sigmas=6.0)[0]
    gptq = quantize(state, bits=6, clip_sigmas=6.0, hessians=hessians, damp=0.01)[0]
    expected = train_gpt.quantize_rows_gptq(state[fc], hessians[fc], 6, 6.0, 0.01)[0]
    assert torch.equal(gptq["quantized"][fc], expected) and not torch.equal(expected, plain["quantized"][fc])
    for name in state:
        assert torch.equal(gptq["scales"].get(name, torch.tensor(0)), plain["scales"].get(name, torch.tensor(0)))
        if name != fc:
            assert torch.equal(gptq["quantized"].get(name, torch.tensor(0)), plain["quantized"].get(name, torch.tensor(0)))
    assert gptq["qmeta"] == plain["qmeta"] and gptq.keys() == plain.keys(), "one format: the loader needs no change"
    assert plain["quantized"][proj].shape == state[proj].shape


class RecordingLoader:
    """Hands out fixed token batches and remembers each request."""

    def __init__(self, batches: list[torch.Tensor]):
        self.batches, self.requests = iter(batches), []

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int):
        self.requests.append((global_tokens, seq_len, grad_accum_steps))
        x = next(self.batches)
        return x, x


def test_hessians_sum_every_linear_input_over_the_calibration_batches():
    args = train_gpt.Hyperparameters(dict(VOCAB_SIZE="512", NUM_LAYERS="2", MODEL_DIM="64", NUM_HEADS="4",
                                          NUM_KV_HEADS="2", TRAIN_SEQ_LEN="32", TRAIN_BATCH_TOKENS="512",
                                          GPTQ_CALIB_BATCHES="3", TIE_EMBEDDINGS="0"))
    model = train_gpt.build_model(args, torch.device("cpu"))
    batches = [torch.randint(0, 512, (1, 32)) for _ in range(3 * 2)]
    loader = RecordingLoader(batches)
    hessians = train_gpt.collect_hessians(model, loader, args, grad_accum_steps=2)
    assert loader.requests == [(512, 32, 2)] * 6, "training batches, read as a training step reads them"
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, train_gpt.CastedLinear)}
    assert set(hessians) == linears and "lm_head.weight" in linears and len(linears) == 2 * 6 + 1
    assert not any(m._forward_pre_hooks for m in model.modules()), "the hooks are gone"
    # The first layer's attention reads the normed embedding (resid_mix starts at (1, 0)).
    inputs = torch.cat([F.rms_norm(F.rms_norm(model.tok_emb(x).float(), (64,)), (64,))[0] for x in batches])
    torch.testing.assert_close(hessians["blocks.0.attn.c_q.weight"], inputs.T @ inputs, rtol=0.02, atol=0.5)
    assert torch.equal(hessians["blocks.0.attn.c_q.weight"], hessians["blocks.0.attn.c_v.weight"])
    assert hessians["blocks.0.mlp.proj.weight"].shape == (128, 128) and hessians["blocks.0.mlp.proj.weight"].dtype == torch.float32


def test_lzma_and_zlib_artifacts_load_alike_and_say_how_they_were_made(tmp_path):
    obj = quantize(export_state(), bits=6)[0]
    loaded = {}
    for compressor, magic in (("zlib", b"\x78"), ("lzma", b"\xfd7zXZ\x00")):
        blob, raw_bytes = train_gpt.serialize_artifact(obj, compressor)
        assert blob.startswith(magic)
        path = tmp_path / f"{compressor}.int6.ptz"
        path.write_bytes(blob)
        state, bits, found = train_gpt.load_artifact(str(path))
        assert (bits, found) == (6, compressor)
        loaded[compressor] = state, len(blob), raw_bytes
    (a, zlib_bytes, raw_a), (b, lzma_bytes, raw_b) = loaded["zlib"], loaded["lzma"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], v) for k, v in train_gpt.dequantize_state_dict(obj).items())
    assert raw_a == raw_b and lzma_bytes < zlib_bytes


def test_an_artifact_says_its_bit_width_even_without_big_matrices(tmp_path):
    small = {"w": torch.randn(64, 64), "v": torch.randn(64)}  # nothing above KEEP_FLOAT_MAX_NUMEL
    path = tmp_path / "small.int6.ptz"
    path.write_bytes(train_gpt.serialize_artifact(quantize(small, bits=6)[0], "lzma")[0])
    assert train_gpt.load_artifact(str(path))[1:] == (6, "lzma")


def test_export_names_follow_the_settings():
    seed = train_gpt.Hyperparameters(dict(QUANT_BITS="8", COMPRESSOR="zlib"))
    int6 = train_gpt.Hyperparameters(dict(QUANT_BITS="6", COMPRESSOR="lzma"))
    assert train_gpt.export_label(seed) == "int8+zlib" and train_gpt.export_label(int6) == "int6+lzma"
    assert train_gpt.run_paths("r", 8)["artifact"] == Path("artifacts") / "r_model.int8.ptz"
    assert train_gpt.run_paths("r", 6)["artifact"] == Path("artifacts") / "r_model.int6.ptz"


# ---- the model --------------------------------------------------------------------------------

# Every model switch beyond the seed, on.
BEYOND_SEED_MODEL = dict(MLP_LEAKY_SLOPE="0.5", PARALLEL_LAYERS="2", RECUR_LAYERS="1", RECUR_START="1",
                         XSA_LAYERS="2", ROPE_DIMS="8", LN_SCALE="1", SMEAR_GATE="1")

def test_seed_model_shape_dtypes_and_optimizer_routing():
    args = train_gpt.Hyperparameters(dict(VOCAB_SIZE="1024"))  # the seed's shapes
    model = train_gpt.build_model(args, torch.device("cpu"))
    assert sum(p.numel() for p in model.parameters()) == 17_059_912  # SPEC.md
    params = dict(model.named_parameters())
    assert params["tok_emb.weight"].dtype == torch.bfloat16
    assert params["blocks.0.attn.c_q.weight"].dtype == torch.float32
    assert params["blocks.0.resid_mix"].dtype == params["skip_weights"].dtype == torch.float32
    for name in ("blocks.3.attn.proj.weight", "blocks.8.mlp.proj.weight"):
        assert not params[name].any(), f"{name} starts at zero"
    assert params["tok_emb.weight"].float().std().item() == pytest.approx(0.005, rel=0.02)
    optimizers, muon = train_gpt.build_optimizers(model, args, 0, 1)
    assert len(muon.param_groups[0]["params"]) == 54  # 6 matrices in each of 9 blocks
    assert [g["lr"] for o in optimizers for g in o.param_groups] == [0.03, 0.02, 0.02]
    assert all("base_lr" in g for o in optimizers for g in o.param_groups)
    assert (muon.param_groups[0]["weight_decay"], muon.param_groups[0]["row_norm"]) == (0.04, True)  # defaults
    args = train_gpt.Hyperparameters(dict(VOCAB_SIZE="1024", MUON_WEIGHT_DECAY="0", MUON_ROW_NORM="0"))  # the seed's
    _, muon = train_gpt.build_optimizers(model, args, 0, 1)
    assert (muon.param_groups[0]["weight_decay"], muon.param_groups[0]["row_norm"]) == (0.0, False)


def test_rotary_angles_are_float32_and_positions_exact():
    cos, sin = train_gpt.rotary_tables(4096, 64, 10000.0, torch.device("cpu"))
    assert cos.dtype == torch.float32 and cos.shape == (1, 1, 4096, 32)
    # position 4095, lowest frequency pair: angle 4095 exactly (a bf16 position would read 4096)
    assert sin[0, 0, 4095, 0].item() == pytest.approx(np.sin(4095.0), abs=1e-4)
    x = torch.randn(1, 1, 4096, 64)
    rotated = train_gpt.apply_rotary(x, cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps lengths


def test_seed_switches_compute_the_seed_block():
    torch.manual_seed(0)
    x, mlp = torch.randn(4, 16), train_gpt.MLP(16, 2, 0.0)
    torch.nn.init.normal_(mlp.proj.weight)
    assert torch.equal(mlp(x), mlp.proj(mlp.fc(x).relu().square()))  # slope 0 is the seed's relu^2
    mlp.leaky_slope = 0.5
    h = mlp.fc(x)
    torch.testing.assert_close(mlp(x), mlp.proj(torch.where(h > 0, h, 0.5 * h).square()))


def test_parallel_layers_feed_attention_and_mlp_the_same_input():
    torch.manual_seed(0)
    env = dict(VOCAB_SIZE="64", NUM_LAYERS="3", MODEL_DIM="32", NUM_HEADS="4", NUM_KV_HEADS="2", PARALLEL_LAYERS="2")
    args = train_gpt.Hyperparameters(env)
    model = train_gpt.build_model(args, torch.device("cpu"))
    assert [block.parallel for block in model.blocks] == [False, True, True]  # the last two
    block = model.blocks[1]
    for linear in (block.attn.proj, block.mlp.proj):
        torch.nn.init.normal_(linear.weight, std=0.1)
    with torch.no_grad():
        block.resid_mix[1].fill_(0.5)
        block.mlp_scale.fill_(0.7)
    x, x0 = torch.randn(2, 8, 32), torch.randn(2, 8, 32)
    rope = train_gpt.rotary_tables(8, 8, 10000.0, torch.device("cpu"))
    mixed = x + 0.5 * x0
    normed = torch.nn.functional.rms_norm(mixed, (32,))
    expected = mixed + block.attn(normed, rope) + 0.7 * block.mlp(normed)
    torch.testing.assert_close(block(x, x0, rope), expected)
    block.parallel = False  # in sequence (the seed), the MLP reads the attention's output too
    after_attn = mixed + block.attn(normed, rope)
    sequential = after_attn + 0.7 * block.mlp(torch.nn.functional.rms_norm(after_attn, (32,)))
    torch.testing.assert_close(block(x, x0, rope), sequential)
    assert not torch.allclose(sequential, expected)


def test_depth_recurrence_runs_the_repeated_blocks_twice_with_skips_over_the_looped_order():
    torch.manual_seed(0)
    env = dict(VOCAB_SIZE="64", NUM_LAYERS="5", MODEL_DIM="32", NUM_HEADS="4", NUM_KV_HEADS="2",
               RECUR_LAYERS="2", RECUR_START="1")
    model = train_gpt.build_model(train_gpt.Hyperparameters(env), torch.device("cpu"))
    assert model.skip_weights.shape == (3, 32)  # 7 blocks run looped: 3 encoder/decoder pairs
    for block in model.blocks:
        torch.nn.init.normal_(block.attn.proj.weight, std=0.1)
        torch.nn.init.normal_(block.mlp.proj.weight, std=0.1)
    with torch.no_grad():
        model.skip_weights.copy_(torch.rand(3, 32))
    ids = torch.randint(0, 64, (2, 8))
    rope = train_gpt.rotary_tables(8, 8, 10000.0, torch.device("cpu"))

    def by_hand(order, skips):  # skips: {position in order: (position whose output it adds, skip weight row)}
        x = x0 = torch.nn.functional.rms_norm(model.tok_emb(ids), (32,))
        outputs = []
        for j, i in enumerate(order):
            if j in skips:
                x = x + model.skip_weights[skips[j][1]].to(x.dtype) * outputs[skips[j][0]]
            x = model.blocks[i](x, x0, rope)
            outputs.append(x)
        logits = torch.nn.functional.linear(torch.nn.functional.rms_norm(x, (32,)), model.tok_emb.weight)
        return 30 * torch.tanh(logits / 30)

    assert model.block_order() == [0, 1, 2, 3, 4] and not model.looped  # off until the loop switches it on
    # Unlooped: block 1 feeds block 2 through row 0, block 0 feeds block 3 through row 1.
    torch.testing.assert_close(model.logits(ids), by_hand([0, 1, 2, 3, 4], {2: (1, 0), 3: (0, 1)}))
    model.looped = True
    assert model.block_order() == [0, 1, 2, 1, 2, 3, 4]
    # Looped, those pairs keep their rows (block 1 into block 2's second pass, block 0 into block 3),
    # and the new inner pair (block 2 into block 1's second pass) takes the new row 2; block 4 has none.
    torch.testing.assert_close(model.logits(ids), by_hand([0, 1, 2, 1, 2, 3, 4], {3: (2, 2), 4: (1, 0), 5: (0, 1)}))
    # A compiled model follows the switch (dynamo guards on the attribute) instead of keeping its first graph.
    compiled = torch.compile(model, backend="eager", dynamic=False, fullgraph=True)
    losses = {}
    for looped in (True, False, True, False):
        model.looped = looped
        with torch.no_grad():
            losses.setdefault(looped, []).append(compiled(ids, ids, reduction="none"))
            torch.testing.assert_close(losses[looped][-1], model(ids, ids, reduction="none"), rtol=0, atol=0)
    assert not torch.equal(losses[True][0], losses[False][0])


SMALL_MODEL = dict(VOCAB_SIZE="64", NUM_LAYERS="4", MODEL_DIM="32", NUM_HEADS="4", NUM_KV_HEADS="2")


def seed_rotary(x, cos, sin):
    """The seed's RoPE, as it was written before ROPE_DIMS: every dimension, j paired with j + head_dim/2."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


def test_partial_rotary_rotates_only_the_first_rope_dims():
    cos, sin = train_gpt.rotary_tables(64, 16, 10000.0, torch.device("cpu"))
    assert cos.shape == (1, 1, 64, 8)
    x = torch.randn(2, 3, 64, 48)
    rotated = train_gpt.apply_rotary(x, cos, sin)
    assert torch.equal(rotated[..., 16:], x[..., 16:]), "the other 32 dimensions carry no position"
    # Dimension j < 8 pairs with j + 8 at angle position * 10000^(-j/8): RoPE of a 16-dimensional head.
    angles = torch.arange(64.0)[:, None] * 10000.0 ** (-torch.arange(8.0) / 8)
    x1, x2 = x[..., :8], x[..., 8:16]
    expected = torch.cat((x1 * angles.cos() + x2 * angles.sin(), x2 * angles.cos() - x1 * angles.sin()), dim=-1)
    torch.testing.assert_close(rotated[..., :16], expected)


def test_rope_dims_of_the_whole_head_is_the_seed_rotary():
    x = torch.randn(2, 3, 64, 48)
    cos, sin = train_gpt.rotary_tables(64, 48, 10000.0, torch.device("cpu"))
    assert torch.equal(train_gpt.apply_rotary(x, cos, sin), seed_rotary(x, cos, sin))
    ids = torch.randint(0, 64, (2, 16))
    models = [train_gpt.build_model(train_gpt.Hyperparameters(dict(SMALL_MODEL, ROPE_DIMS=n)), torch.device("cpu"))
              for n in ("0", "8")]
    assert [m.rope_dims for m in models] == [8, 8]  # 0 means all: the head has 32 / 4 = 8 dimensions
    for m in models:
        for block in m.blocks:
            torch.nn.init.normal_(block.attn.proj.weight, std=0.1)
    models[1].load_state_dict(models[0].state_dict())
    assert torch.equal(models[0].logits(ids), models[1].logits(ids))


def test_xsa_removes_from_each_head_its_own_value_direction_in_the_last_blocks():
    torch.manual_seed(0)
    env = dict(SMALL_MODEL, XSA_LAYERS="3", SDPA_BACKEND="flash")  # native GQA: v keeps its 2 heads
    model = train_gpt.build_model(train_gpt.Hyperparameters(env), torch.device("cpu"))
    assert [block.attn.xsa for block in model.blocks] == [False, True, True, True]
    attn = model.blocks[1].attn
    assert not attn.expand_kv  # cuDNN's layout, with v repeated, is compared with this one further down
    with torch.no_grad():
        attn.proj.weight.copy_(torch.eye(32))  # the output is then the heads' outputs side by side
    x, rope = torch.randn(2, 10, 32), train_gpt.rotary_tables(10, 8, 10000.0, torch.device("cpu"))
    out = attn(x, rope).view(2, 10, 4, 8)
    attn.xsa = False
    plain = attn(x, rope).view(2, 10, 4, 8)
    v = attn.c_v(x).view(2, 10, 2, 8).repeat_interleave(2, dim=2)  # 4 query heads on 2 KV heads: h reads h // 2
    assert (out * v).sum(-1).abs().max() < 1e-5, "nothing left along the own value"
    assert (plain * v).sum(-1).abs().max() > 1e-2
    v_dir = torch.nn.functional.normalize(v, dim=-1)  # the reference, with the KV heads repeated
    torch.testing.assert_close(out, plain - (plain * v_dir).sum(-1, keepdim=True) * v_dir)


def test_ln_scale_damps_block_l_by_one_over_sqrt_l_plus_1():
    torch.manual_seed(0)
    env = dict(SMALL_MODEL, LN_SCALE="1", RECUR_LAYERS="2", RECUR_START="1")
    model = train_gpt.build_model(train_gpt.Hyperparameters(env), torch.device("cpu"))
    # By physical index: blocks 1 and 2, repeated by the recurrence, keep their factor in both passes.
    assert [block.norm_scale for block in model.blocks] == pytest.approx([1, 2 ** -0.5, 3 ** -0.5, 0.5])
    block = model.blocks[2]
    for linear in (block.attn.proj, block.mlp.proj):
        torch.nn.init.normal_(linear.weight, std=0.1)
    x, x0 = torch.randn(2, 8, 32), torch.randn(2, 8, 32)
    rope = train_gpt.rotary_tables(8, 8, 10000.0, torch.device("cpu"))
    rms = lambda t: torch.nn.functional.rms_norm(t, (32,))  # noqa: E731
    after_attn = x + block.attn(rms(x) / 3 ** 0.5, rope)  # resid_mix starts at (1, 0): the block reads x
    torch.testing.assert_close(block(x, x0, rope), after_attn + block.mlp(rms(after_attn) / 3 ** 0.5))
    seed = train_gpt.build_model(train_gpt.Hyperparameters(SMALL_MODEL), torch.device("cpu")).blocks[2]
    seed.load_state_dict(block.state_dict())
    after_attn = x + seed.attn(rms(x), rope)
    assert seed.norm_scale == 1.0 and torch.equal(seed(x, x0, rope), after_attn + seed.mlp(rms(after_attn)))


def smeared_embeddings(model, *ids):
    """Block 0's input x0 (the embedding after the smear gate) for each batch of token ids."""
    embedded = []
    hook = model.blocks[0].register_forward_pre_hook(lambda _, inputs: embedded.append(inputs[1]))  # (x, x0, rope)
    for t in ids:
        model.logits(t)
    hook.remove()
    return embedded


def test_smear_gate_mixes_in_the_previous_position_and_never_across_a_bos():
    torch.manual_seed(0)
    model = train_gpt.build_model(train_gpt.Hyperparameters(dict(SMALL_MODEL, SMEAR_GATE="1")), torch.device("cpu"))
    assert model.smear_gate.dtype == torch.float32 and torch.equal(model.smear_gate, torch.zeros(32))  # g = 1/2
    with torch.no_grad():
        model.smear_gate.normal_()
    g = torch.sigmoid(model.smear_gate.bfloat16()).float()
    ids = torch.randint(2, 64, (2, 12))  # no BOS
    (smeared,) = smeared_embeddings(model, ids)
    x = torch.nn.functional.rms_norm(model.tok_emb(ids), (32,)).float()  # the model's bf16 embedding
    expected = (1 - g) * x
    expected[:, 1:] += g * x[:, :-1]  # the first position has no previous one
    bf16 = dict(rtol=0.02, atol=0.01)  # the model computes in bf16
    torch.testing.assert_close(smeared.float(), expected, **bf16)
    # A BOS at position 5: changing every token before it changes nothing from it on.
    ids[:, 5] = train_gpt.BOS_ID
    other = ids.clone()
    other[:, :5] = (ids[:, :5] + 1) % 62 + 2
    before, after = smeared_embeddings(model, ids, other)
    assert torch.equal(before[:, 5:], after[:, 5:]) and not torch.equal(before[:, :5], after[:, :5])
    bos = torch.nn.functional.rms_norm(model.tok_emb(ids[:, 5]), (32,)).float()
    torch.testing.assert_close(before[:, 5].float(), (1 - g) * bos, **bf16)  # the BOS keeps only its own share
    ids[:, 5] = other[:, 5] = 7  # without the BOS, position 5 takes in position 4
    before, after = smeared_embeddings(model, ids, other)
    assert not torch.equal(before[:, 5], after[:, 5])


def test_smear_gate_is_a_scalar_adam_parameter_kept_exactly_by_the_export(tmp_path):
    args = train_gpt.Hyperparameters(dict(SMALL_MODEL, SMEAR_GATE="1"))
    model = train_gpt.build_model(args, torch.device("cpu"))
    optimizers, _ = train_gpt.build_optimizers(model, args, 0, 1)  # asserts that every parameter has a group
    assert any(p is model.smear_gate for p in optimizers[-1].param_groups[0]["params"])  # the scalar Adam
    assert optimizers[-1].param_groups[0]["base_lr"] == args.scalar_lr
    with torch.no_grad():
        model.smear_gate.normal_()
    path = tmp_path / "smear.int8.ptz"
    path.write_bytes(train_gpt.serialize_artifact(quantize(model.state_dict())[0], "zlib")[0])
    state = train_gpt.load_artifact(str(path))[0]
    assert state["smear_gate"].dtype == torch.float32 and torch.equal(state["smear_gate"], model.smear_gate)
    without = train_gpt.build_model(train_gpt.Hyperparameters(SMALL_MODEL), torch.device("cpu"))
    with pytest.raises(train_gpt.ConfigError, match=r"unexpected \['smear_gate'\]"):
        train_gpt.load_weights(without, state, str(path))


def test_model_and_newton_schulz_trace_as_single_graphs():
    """The GPU run compiles with fullgraph=True; a graph break would only show up there. The
    eager backend traces with dynamo alone, so this costs seconds on the CPU."""
    env = dict(VOCAB_SIZE="512", NUM_LAYERS="3", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2",
               **BEYOND_SEED_MODEL)
    model = train_gpt.build_model(train_gpt.Hyperparameters(env), torch.device("cpu"))
    compiled = torch.compile(model, backend="eager", dynamic=False, fullgraph=True)
    x = torch.randint(0, 512, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = compiled(x, x)
    loss.backward()
    assert model.blocks[0].attn.c_q.weight.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert compiled(x, x, reduction="none").shape == x.shape
    ns = torch.compile(train_gpt.zeropower_via_newtonschulz5, backend="eager", fullgraph=True)
    torch.testing.assert_close(ns(torch.randn(64, 128), steps=5).float().norm(), torch.tensor(8.0), rtol=0.2, atol=0)


def test_batched_muon_matches_one_matrix_at_a_time():
    torch.manual_seed(1)
    shapes = [(64, 32), (32, 64), (64, 32), (48, 48), (32, 64), (48, 48), (64, 32)]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    start = [p.detach().clone() for p in params]
    muon = train_gpt.Muon(params, lr=0.05, momentum=0.95, backend_steps=5)
    grads = [torch.randn(s) for s in shapes]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    muon.step()
    for p, w0, g in zip(params, start, grads):
        u = train_gpt.zeropower_via_newtonschulz5(g + 0.95 * g, steps=5).float()
        u = (u * max(1.0, g.shape[0] / g.shape[1]) ** 0.5).bfloat16().float()
        # A batched bf16 matmul may round differently from a single one: within bf16 noise.
        torch.testing.assert_close(p.detach(), w0 - 0.05 * u, rtol=0, atol=0.05 * 0.02)


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


def leave_gloo() -> None:
    """Ends a spawned rank without gloo's teardown, which now and then aborts the exiting process
    after all its work is done (pytorch/pytorch#179291): a barrier, then a plain exit."""
    dist.barrier()
    os._exit(0)


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


@pytest.mark.parametrize("features", [{}, BEYOND_SEED_MODEL])
def test_cudnn_layout_computes_the_same_attention(features):
    env = dict(VOCAB_SIZE="512", NUM_LAYERS="2", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", **features)
    native = train_gpt.build_model(train_gpt.Hyperparameters(dict(env, SDPA_BACKEND="flash")), torch.device("cpu"))
    expanded = train_gpt.build_model(train_gpt.Hyperparameters(dict(env, SDPA_BACKEND="cudnn")), torch.device("cpu"))
    assert expanded.blocks[0].attn.expand_kv and not native.blocks[0].attn.expand_kv
    with torch.no_grad():
        for p in native.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        expanded.load_state_dict(native.state_dict())
        x = torch.randint(0, 512, (2, 48))
        torch.testing.assert_close(expanded.logits(x), native.logits(x), rtol=1e-5, atol=1e-5)


def test_attention_kernel_probe_compares_two_kernels():
    from torch.nn.attention import SDPBackend
    cpu = torch.device("cpu")
    assert train_gpt.attention_kernels_agree(cpu, 2, 64, 16, SDPBackend.MATH, SDPBackend.FLASH_ATTENTION)
    with pytest.raises(RuntimeError):  # a kernel that cannot run here raises; select_attention falls back
        train_gpt.attention_kernels_agree(cpu, 2, 64, 16, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH)
    assert train_gpt.select_attention("cudnn", cpu, 8, 4096, 64) == ("cudnn", "")  # no CUDA: nothing to pick


# ---- the weight average (EMA) -----------------------------------------------------------------

class RandomBatches:
    """Stands in for the training loader: random tokens, a stream of its own for each rank."""

    def __init__(self, vocab_size: int, rank: int = 0):
        self.vocab_size, self.generator = vocab_size, torch.Generator().manual_seed(rank)

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int):
        ids = torch.randint(0, self.vocab_size, (global_tokens // 8 // seq_len, seq_len + 1), generator=self.generator)
        return ids[:, :-1], ids[:, 1:]


TRAIN_ENV = dict(SMALL_MODEL, TRAIN_BATCH_TOKENS="256", TRAIN_SEQ_LEN="16", VAL_LOSS_EVERY="0", TRAIN_LOG_EVERY="0",
                 MAX_WALLCLOCK_SECONDS="0", COMPILE="0", MATRIX_LR="0.04", SCALAR_LR="0.04", TIED_EMBED_LR="0.1")


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
