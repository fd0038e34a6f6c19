"""The model: shapes, dtypes and optimizer routing, RoPE, every switch beyond the seed, the attention
kernels, and the graphs torch.compile traces."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

import train_gpt
from conftest import SEED_SETTINGS, SMALL_MODEL, quantize


# Every model switch beyond the seed, on.
BEYOND_SEED_MODEL = dict(MLP_LEAKY_SLOPE="0.5", PARALLEL_LAYERS="2", RECUR_LAYERS="1", RECUR_START="1",
                         XSA_LAYERS="2", ROPE_DIMS="8", LN_SCALE="1", SMEAR_GATE="1")

def test_seed_model_shape_dtypes_and_optimizer_routing():
    args = train_gpt.Hyperparameters(SEED_SETTINGS)
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
    assert (muon.param_groups[0]["weight_decay"], muon.param_groups[0]["row_norm"]) == (0.0, False)
    args = train_gpt.Hyperparameters(dict(SEED_SETTINGS, MUON_WEIGHT_DECAY="0.04", MUON_ROW_NORM="1"))
    _, muon = train_gpt.build_optimizers(model, args, 0, 1)
    assert (muon.param_groups[0]["weight_decay"], muon.param_groups[0]["row_norm"]) == (0.04, True)


def test_rotary_angles_are_float32_and_positions_exact():
    cos, sin = train_gpt.rotary_tables(4096, 64, 10000.0, torch.device("cpu"))
    assert cos.dtype == torch.float32 and cos.shape == (1, 4096, 1, 32)  # (batch, position, head, pair)
    # position 4095, lowest frequency pair: angle 4095 exactly (a bf16 position would read 4096)
    assert sin[0, 4095, 0, 0].item() == pytest.approx(np.sin(4095.0), abs=1e-4)
    x = torch.randn(1, 4096, 1, 64)
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
    env = dict(SMALL_MODEL, NUM_LAYERS="3", PARALLEL_LAYERS="2")
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
    env = dict(SMALL_MODEL, NUM_LAYERS="5", RECUR_LAYERS="2", RECUR_START="1")
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


def seed_rotary(x, cos, sin):
    """The seed's RoPE, as it was written before ROPE_DIMS: every dimension, j paired with j + head_dim/2."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


def test_partial_rotary_rotates_only_the_first_rope_dims():
    cos, sin = train_gpt.rotary_tables(64, 16, 10000.0, torch.device("cpu"))
    assert cos.shape == (1, 64, 1, 8)
    x = torch.randn(2, 64, 3, 48)  # (batch, position, head, head dimension)
    rotated = train_gpt.apply_rotary(x, cos, sin)
    assert torch.equal(rotated[..., 16:], x[..., 16:]), "the other 32 dimensions carry no position"
    # Dimension j < 8 pairs with j + 8 at angle position * 10000^(-j/8): RoPE of a 16-dimensional head.
    angles = (torch.arange(64.0)[:, None] * 10000.0 ** (-torch.arange(8.0) / 8))[:, None]  # (position, 1, pair)
    x1, x2 = x[..., :8], x[..., 8:16]
    expected = torch.cat((x1 * angles.cos() + x2 * angles.sin(), x2 * angles.cos() - x1 * angles.sin()), dim=-1)
    torch.testing.assert_close(rotated[..., :16], expected)


def test_rope_dims_of_the_whole_head_is_the_seed_rotary():
    x = torch.randn(2, 64, 3, 48)
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
    env = dict(SMALL_MODEL, XSA_LAYERS="3")  # 4 query heads on 2 KV heads
    model = train_gpt.build_model(train_gpt.Hyperparameters(env), torch.device("cpu"))
    assert [block.attn.xsa for block in model.blocks] == [False, True, True, True]
    attn = model.blocks[1].attn
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


def reference_attention(q, k, v):
    """Causal attention on (B, T, H, hd) with the KV heads repeated, in float32: what every kernel computes."""
    group = q.size(2) // k.size(2)
    k, v = (t.repeat_interleave(group, dim=2).transpose(1, 2).float() for t in (k, v))
    return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2).float(), k, v, is_causal=True).transpose(1, 2)


def sdpa_and_fa4_twins(features: dict) -> tuple:
    """Two small models with the same (perturbed, so not at init) weights: one on flash SDPA, one on FA4."""
    env = dict(VOCAB_SIZE="512", NUM_LAYERS="2", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", **features)
    sdpa, fa4 = (train_gpt.build_model(train_gpt.Hyperparameters(dict(env, SDPA_BACKEND=b)), torch.device("cpu"))
                 for b in ("flash", "fa4"))
    with torch.no_grad():
        for p in sdpa.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        fa4.load_state_dict(sdpa.state_dict())
    return sdpa, fa4


@pytest.mark.parametrize("features", [{}, BEYOND_SEED_MODEL])
def test_a_flash_kernel_and_sdpa_compute_the_same_model(features, monkeypatch):
    """FA3/FA4 take (B, T, H, hd) in bf16 with the KV heads grouped; a stand-in computing the reference shows the
    model hands them the same attention as SDPA (whose CPU kernel runs for "cudnn" and "flash" alike)."""
    monkeypatch.setitem(train_gpt.FLASH_KERNELS, "fa4", lambda q, k, v: reference_attention(q, k, v).bfloat16())
    sdpa, flash = sdpa_and_fa4_twins(features)
    assert flash.blocks[0].attn.backend == "fa4"
    with torch.no_grad():
        x = torch.randint(0, 512, (2, 48))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.testing.assert_close(flash.logits(x).float(), sdpa.logits(x).float(), rtol=0.02, atol=0.02)


def fake_fa4_interface():
    """flash_attn.cute.interface as FA4 has it (the two functions train_gpt.py calls), computed by the reference."""
    def forward(q, k, v, causal, return_lse):
        assert causal and return_lse and q.dtype == torch.bfloat16
        group = q.size(2) // k.size(2)
        scores = torch.einsum("bthd,bshd->bhts", q.float(), k.float().repeat_interleave(group, dim=2)) / q.size(-1) ** 0.5
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
        return reference_attention(q, k, v).to(q.dtype), scores.logsumexp(-1), None, None, None

    def backward(q, k, v, out, dout, lse, causal):  # by hand: a custom op runs below autograd
        group, scale = q.size(2) // k.size(2), q.size(-1) ** -0.5
        qf, kf, vf, do = (t.float().transpose(1, 2) for t in (q, k.repeat_interleave(group, 2),
                                                              v.repeat_interleave(group, 2), dout))
        scores = (qf @ kf.mT * scale).masked_fill(torch.ones(q.size(1), q.size(1), dtype=torch.bool).triu(1), -1e30)
        p = scores.softmax(-1)
        dp = do @ vf.mT
        ds = p * (dp - (dp * p).sum(-1, keepdim=True))
        fold = lambda t: t.transpose(1, 2).unflatten(2, (k.size(2), group)).sum(3)  # noqa: E731  (the KV heads' sum)
        grads = (ds @ kf * scale).transpose(1, 2), fold(ds.mT @ qf * scale), fold(p.mT @ do)
        return tuple(g.to(q.dtype).contiguous() for g in grads)  # FA4 allocates them (B, T, H, hd), contiguous

    module = types.ModuleType("flash_attn.cute.interface")
    module._flash_attn_fwd, module._flash_attn_bwd = forward, backward
    return module


@pytest.fixture(scope="module")
def fake_fa4():
    """load_flash_kernel("fa4") on the stand-in interface: it registers train_gpt::fa4_forward and fa4_backward,
    which a process can do once."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("flash_attn", "flash_attn.cute"):
            patch.setitem(sys.modules, name, types.ModuleType(name))
        patch.setitem(sys.modules, "flash_attn.cute.interface", fake_fa4_interface())
        yield train_gpt.load_flash_kernel("fa4")


def test_fa4_runs_as_torch_ops_that_compile_and_give_the_reference_gradients(fake_fa4):
    fa4 = fake_fa4
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 16, h, 8, dtype=torch.bfloat16, requires_grad=True) for h in (4, 2, 2))
    compiled = torch.compile(lambda q, k, v: fa4(q, k, v).float().square().sum(), backend="aot_eager", fullgraph=True)
    compiled(q, k, v).backward()  # traced through the ops' fake shapes and their autograd formula
    got = [t.grad.float() for t in (q, k, v)]
    inputs = [t.detach().float().requires_grad_() for t in (q, k, v)]
    reference_attention(*inputs).square().sum().backward()
    for a, b in zip(got, inputs):
        torch.testing.assert_close(a, b.grad, rtol=0.05, atol=0.05)
    torch.testing.assert_close(fa4(q, k, v).float(), reference_attention(q, k, v), rtol=0.02, atol=0.02)


def test_attention_probe_and_selection(monkeypatch):
    cpu, args = torch.device("cpu"), train_gpt.Hyperparameters(dict(NUM_HEADS="2", NUM_KV_HEADS="1", MODEL_DIM="32",
                                                                      TRAIN_SEQ_LEN="64", COMPILE="0"))
    assert train_gpt.attention_agrees(cpu, "flash", args)
    # A kernel that torch.compile cannot trace (an FA3 build without torch ops) is refused by the probe, compiled
    # as the model is, not at the model's first compiled step.
    untraceable = lambda q, k, v: (torch._dynamo.graph_break(), reference_attention(q, k, v).bfloat16())[1]  # noqa
    monkeypatch.setitem(train_gpt.FLASH_KERNELS, "fa3", untraceable)
    assert train_gpt.attention_agrees(cpu, "fa3", args)
    args.compile = True
    with pytest.raises(Exception, match="graph_break|Unsupported|graph break"):
        train_gpt.attention_agrees(cpu, "fa3", args)
    monkeypatch.setitem(train_gpt.FLASH_KERNELS, "fa3", lambda q, k, v: reference_attention(q, k, v).bfloat16())
    assert train_gpt.attention_agrees(cpu, "fa3", args), "a traceable kernel passes compiled"
    args.compile = False
    monkeypatch.setitem(train_gpt.FLASH_KERNELS, "fa4", lambda q, k, v: reference_attention(q, k, v).bfloat16())
    assert train_gpt.attention_agrees(cpu, "fa4", args)
    monkeypatch.setitem(train_gpt.FLASH_KERNELS, "fa4", lambda q, k, v: 1.5 * reference_attention(q, k, v).bfloat16())
    assert not train_gpt.attention_agrees(cpu, "fa4", args), "a kernel that computes something else is refused"
    with pytest.raises(RuntimeError):  # a kernel that cannot run here raises; select_attention passes it over
        train_gpt.attention_agrees(cpu, "cudnn", args)
    for requested, picked in (("auto", "flash"), ("fa3", "flash"), ("cudnn", "cudnn"), ("flash", "flash")):
        args.sdpa_backend = requested  # no CUDA: SDPA's CPU kernels, named as asked where SDPA has the name
        assert train_gpt.select_attention(args, cpu) == (picked, "")


@pytest.mark.parametrize("with_lse", [False, True])
def test_fa3_gives_the_attention_whether_or_not_its_build_returns_the_lse(monkeypatch, with_lse):
    module = types.ModuleType("flash_attn_interface")
    module.flash_attn_func = lambda q, k, v, causal: (
        (reference_attention(q, k, v), None) if with_lse else reference_attention(q, k, v))
    monkeypatch.setitem(sys.modules, "flash_attn_interface", module)
    q, k, v = (torch.randn(1, 8, h, 4) for h in (2, 1, 1))
    torch.testing.assert_close(train_gpt.load_flash_kernel("fa3")(q, k, v), reference_attention(q, k, v))


@pytest.mark.slow
def test_fa4_ops_compile_with_inductor_in_the_whole_model(fake_fa4, monkeypatch):
    """What a GPU run does with FA4: the whole model through torch.compile(fullgraph=True) and inductor, whose
    kernels hold the ops to their fake shapes and strides; the same loss as SDPA, and gradients."""
    monkeypatch.setitem(train_gpt.FLASH_KERNELS, "fa4", fake_fa4)
    sdpa, flash = sdpa_and_fa4_twins(dict(XSA_LAYERS="2"))
    x = torch.randint(0, 512, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.compile(flash, dynamic=False, fullgraph=True)(x, x)
        want = sdpa(x, x)
    loss.backward()
    assert loss.item() == pytest.approx(want.item(), rel=0.01)
    assert flash.blocks[0].attn.c_q.weight.grad.norm() > 0
