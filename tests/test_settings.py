"""Hyperparameters (every setting seed math or not math, the README's seed environment) and the schedules
(learning rate, momentum warmup, budget fractions)."""

from __future__ import annotations

import re

import pytest
import torch

import train_gpt
from conftest import ROOT, SEED_SETTINGS


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
                     quant_bits=8, embed_bits=8, compressor="zlib", quant_gptq=False, ttt_epochs=0)
# Settings that do not change what is computed (or only matter when a switch above is on).
NOT_MATH = {"run_id", "eval_artifact", "compile", "recur_start", "recur_from_frac", "quant_clip_sigmas",
            "embed_clip_sigmas", "gptq_calib_batches", "gptq_damp", "gptq_reserve_seconds", "ttt_lr", "ttt_chunk_tokens"}


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
    args = train_gpt.Hyperparameters(SEED_SETTINGS)
    for name, value in {**SPEC_DEFAULTS, **SEED_SWITCHES}.items():
        assert getattr(args, name) == value, name
    model = train_gpt.build_model(args, torch.device("cpu"))
    assert all(block.attn.backend == "flash" and not (block.parallel or block.attn.xsa) for block in model.blocks)
    assert all(block.norm_scale == 1.0 for block in model.blocks)
    assert model.blocks[0].mlp.leaky_slope == 0 and model.rope_dims == 64 and model.smear_gate is None


def test_readme_knob_table_gives_every_setting_its_default():
    """Each row of README's "Knobs" table names its variables and their defaults in one order (`A` / `B` | a / b;
    `X_START` / `_STEPS` shortens X_STEPS); every setting has a row and its default is the script's."""
    defaults, stated = train_gpt.Hyperparameters.defaults(), {}
    knobs = (ROOT / "README.md").read_text().split("\n## Knobs\n", 1)[1].split("\n## ", 1)[0]
    for row in re.findall(r"^\| (`[A-Z_].*?) \| (.*?) \|", knobs, re.M):
        names = [n.strip().strip("`") for n in row[0].split(" / ")]
        names = [names[0].rsplit("_", 1)[0] + n if n.startswith("_") else n for n in names]
        stated.update(zip((n.lower() for n in names), row[1].split(" / "), strict=True))
    assert set(stated) == set(defaults)
    for name, text in stated.items():
        text, value = text.strip("`"), defaults[name]
        if isinstance(value, str):
            assert text == value or (value == "" and text in ("(empty)", "fresh per run")), name
        else:
            assert float(text) == float(value), name


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
    no_gptq = train_gpt.Hyperparameters(dict(MAX_WALLCLOCK_SECONDS="30", QUANT_GPTQ="0"))
    assert train_gpt.loop_budget_ms(no_gptq) == 30_000.0
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
